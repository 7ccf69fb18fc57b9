"""Where numba writes its compiled-kernel cache.

numba caches next to the source file (``__pycache__``) and falls back to a per-user
folder. When neither is writable (a read-only site-packages and a read-only home, as in
some containers and clusters) ``cache=True`` fails at import; this module picks a writable
folder first, unless the user set ``NUMBA_CACHE_DIR``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".ppp-probe-", delete=True)
        probe.close()
        return True
    except OSError:
        return False


def choose_cache_dir(package_dir: Path, environ=os.environ) -> Path | None:
    """Return the folder numba should cache into, or None to keep numba's own choice.

    None when ``NUMBA_CACHE_DIR`` is set or the package's ``__pycache__`` is writable;
    otherwise the first writable of ``~/.cache/ppp_zoo/numba`` and a per-user folder in
    the system temp directory.
    """
    if environ.get("NUMBA_CACHE_DIR"):
        return None
    if _writable(package_dir / "__pycache__"):
        return None
    candidates = [
        Path(environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ppp_zoo" / "numba",
        Path(tempfile.gettempdir()) / f"ppp_zoo-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}",
    ]
    for folder in candidates:
        if _writable(folder):
            return folder
    return None


def configure() -> None:
    """Point numba's cache at a writable folder when the default one is read-only."""
    folder = choose_cache_dir(Path(__file__).parent)
    if folder is not None:
        import numba

        numba.config.CACHE_DIR = str(folder)
