"""Assembly kernels compiled once for any x86-64 CPU and shipped with the package.

numba compiles a kernel the first time it is called with new argument types and caches the
machine code for the CPU it runs on. That first compilation takes about 20 s for the
kernels one ``segment`` needs, and every new environment (a user's, a cluster node's, a
CI runner's) pays it again. ``scripts/build_portable_kernels.py`` compiles the kernels of
the common paths for three x86-64 levels (``NUMBA_CPU_NAME`` x86-64-v4: AVX-512;
x86-64-v3: AVX2 and FMA; generic: what every x86-64 CPU has) and writes numba's cache files
into ``_portable_kernels/<level>/``, shipped as package data. A machine uses the best level
it supports (:func:`chosen_variant`).

Each kernel's cache then looks in two places (:class:`PortableCache`):

1. numba's own cache for this CPU (``__pycache__`` or the folder :mod:`._cache` picks): the
   kernels compiled on this machine before, tuned for its CPU;
2. the shipped portable kernels of that level; used only when the numba
   version, the Python version, the kernel's source file (its content) and bytecode, and
   the argument types are those they were built with, and the machine is x86-64.

Anything else (another numba, a changed source file, an argument type not built, another
architecture) falls through to numba's usual compilation, so a fresh install works
everywhere; it only starts faster where the shipped kernels apply. Kernels compiled on the
machine are saved as usual (keyed by its CPU), never into the shipped folder.
``PPP_ZOO_PORTABLE_KERNELS=0`` turns the shipped kernels off: run one segmentation with it
to compile kernels tuned for the machine's own CPU, which later runs find first (the
shipped x86-64-v4 kernels assemble about 1.25x slower than tuned ones on an AVX-512 CPU;
``scripts/bench_first_run.py``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

PORTABLE_DIR = Path(__file__).parent / "_portable_kernels"
VARIANTS = (
    ("x86-64-v4", ("x86-64-v4", "+sse2"),
     {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave", "avx512f",
      "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("x86-64-v3", ("x86-64-v3", "+sse2"),
     {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"}),
    ("generic", ("generic", ""), set()),
)
"""The shipped kernel sets, best first: ``(folder, (cpu name, features) of their numba
codegen key, CPU features the machine needs)``."""


def _enabled() -> bool:
    return os.environ.get("PPP_ZOO_PORTABLE_KERNELS", "1") != "0" and PORTABLE_DIR.is_dir()


@functools.lru_cache(maxsize=None)
def _host_features() -> frozenset[str]:
    from numba.core.codegen import get_host_cpu_features  # "+avx2,-avx512f,..."

    return frozenset(f[1:] for f in get_host_cpu_features().split(",") if f.startswith("+"))


def chosen_variant(host_features: set[str] | None = None) -> tuple[str, tuple[str, str]] | None:
    """The shipped kernel set this machine runs: the first of :data:`VARIANTS` whose
    features it has (None when none is shipped or the machine is not x86-64).

    >>> import platform
    >>> platform.machine() != "x86_64" or chosen_variant(set())[0] == "generic"
    True
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if host_features is None:
        host_features = _host_features()  # read once per process
    for folder, key, needs in VARIANTS:
        if needs <= host_features and (PORTABLE_DIR / folder).is_dir():
            return folder, key
    return None


def _make_cache_class(variant: tuple[str, tuple[str, str]]):
    from numba.core.caching import FunctionCache, IndexDataCacheFile

    folder, cpu_key = variant

    class PortableCache(FunctionCache):
        """numba's per-function cache, falling back to the shipped portable kernels."""

        def __init__(self, py_func):
            super().__init__(py_func)
            self._portable = IndexDataCacheFile(
                cache_path=str(PORTABLE_DIR / folder), filename_base=self._impl.filename_base,
                source_stamp=self._impl.locator.get_source_stamp())

        def _load_overload(self, sig, target_context):
            data = super()._load_overload(sig, target_context)
            if data is not None or not self._enabled:
                return data
            sig_key, magic, code = self._index_key(sig, target_context.codegen())
            try:  # the same key with the shipped level's CPU name and features
                data = self._portable.load((sig_key, (magic[0],) + cpu_key, code))
                return None if data is None else self._impl.rebuild(target_context, data)
            except Exception:  # an unreadable shipped file: compile as usual
                return None

    return PortableCache


def attach(namespace: dict) -> int:
    """Give every cached numba dispatcher in ``namespace`` (a module's globals) the
    :class:`PortableCache`; returns how many. Does nothing when the shipped kernels are
    off or absent, or numba's cache classes cannot be used."""
    if not _enabled():
        return 0
    try:
        from numba.core.caching import FunctionCache
        from numba.core.registry import CPUDispatcher

        variant = chosen_variant()
        if variant is None:
            return 0
        cls = _make_cache_class(variant)
    except Exception:  # pragma: no cover - a numba without these internals
        return 0
    n = 0
    for obj in list(namespace.values()):
        if isinstance(obj, CPUDispatcher) and type(obj._cache) is FunctionCache:
            try:
                obj._cache = cls(obj.py_func)
                n += 1
            except Exception:  # pragma: no cover - keep numba's own cache
                pass
    return n
