"""Whether the CUDA assembly kernels can run in this process, and may run unasked.

Kept apart from the kernels (``_cuda_kernels.py`` and the modules it imports), which import
``numba.cuda`` and define every kernel: :func:`unavailable_reason` asks numba for a GPU and a
compiler, :func:`cuda_errors` names the exception types of a driver or compiler failure.
``numba.cuda`` is imported only when one of them is called.

:func:`self_check` keeps the verdict of the self-check that ``device="auto"`` needs before
it takes the GPU (:func:`ppp_zoo.postprocess.assembly.cuda_self_check` runs it): once per
process, and on a real GPU also in the file ``cuda_self_check.json`` of numba's cache
folder (``NUMBA_CACHE_DIR``, else ``ppp_zoo/postprocess/__pycache__``), keyed by the GPU's
name and compute capability, the numba version and a hash of the kernels' source, so that
later processes on the same machine skip it. Deleting the file makes the next process check
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

import numba

#: running in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): kernels run as Python
SIM = bool(numba.config.ENABLE_CUDASIM)

_AVAILABLE = False  # once the kernels can run, they can for the rest of the process


def unavailable_reason() -> str | None:
    """None when the CUDA kernels can run here, else why not (one sentence)."""
    global _AVAILABLE
    if SIM or _AVAILABLE:
        return None
    reason = _unavailable_reason()
    _AVAILABLE = reason is None
    return reason


def _unavailable_reason() -> str | None:
    from numba import cuda

    try:
        if not cuda.is_available():
            return ("no CUDA GPU: numba.cuda finds no NVIDIA GPU with a working driver "
                    "(libcuda)")
    except Exception as err:  # noqa: BLE001 - the driver's own message says why
        return f"no CUDA GPU: numba.cuda cannot use the driver ({type(err).__name__}: {err})"
    try:
        from numba.cuda.cudadrv import nvvm

        if not nvvm.is_available():
            return ("a CUDA GPU is present but numba finds no NVVM to compile kernels: "
                    "install a CUDA toolkit (or set CUDA_HOME), or the numba-cuda package "
                    "with its CUDA wheels")
    except ImportError:
        pass
    return None


def cuda_errors() -> tuple:
    """The exception types of a CUDA driver, compiler or toolkit failure (for ``auto``
    to fall back to the CPU on)."""
    if SIM:
        return ()
    errors = []
    try:
        from numba.cuda.cudadrv import error as E

        errors += [E.CudaDriverError, E.CudaRuntimeError, E.CudaSupportError, E.NvvmError,
                   E.NvvmSupportError]
    except ImportError:
        pass
    try:
        from numba.cuda.cudadrv.driver import LinkerError

        errors.append(LinkerError)
    except ImportError:
        pass
    return tuple(errors)


# --------------------------------------------------------------------------- self-check
RECORD_FILE = "cuda_self_check.json"
#: the sources whose kernels the self-check vouches for
CHECKED_SOURCES = ("_cuda_kernels.py", "_cuda_consensus.py", "_cuda_graph.py",
                   "_cuda_rounding.py", "_kernels.py", "_state.py", "assembly.py")

_LOCK = threading.Lock()
_VERDICT: dict[str, str | None] = {}  # {"reason": None (passed) or why not}, once known


def self_check(run: Callable[[], str | None]) -> str | None:
    """None when the CUDA kernels passed the self-check here, else why not (one sentence).

    ``run`` performs the check (None: passed, else the difference it found); it runs at
    most once per process, and not at all when the record file holds a verdict for this
    GPU, numba and kernel source. A verdict from a completed comparison is recorded (not in
    numba's simulator); an exception raised by ``run`` (a driver or compiler failure) is a
    failed check for this process only. A failed check warns once.
    """
    with _LOCK:
        if "reason" in _VERDICT:
            return _VERDICT["reason"]
        key = None if SIM else _record_key()
        found, reason = _read_record(key) if key is not None else (False, None)
        if not found:
            try:
                reason = run()
            except Exception as err:  # noqa: BLE001 - any failure means: not on this GPU
                reason = f"the self-check could not run ({type(err).__name__}: {err})"
            else:
                if key is not None:
                    _write_record(key, reason)
        _VERDICT["reason"] = reason
    if reason is not None:
        warnings.warn(f"the CUDA assembly kernels failed their self-check on this GPU "
                      f"({reason}): device='auto' assembles on the CPU", RuntimeWarning,
                      stacklevel=3)
    return reason


def forget_self_check() -> None:
    """Drop this process's verdict, so that the next :func:`self_check` decides anew (the
    record file is kept)."""
    with _LOCK:
        _VERDICT.clear()


def gpu_name() -> str | None:
    """The current CUDA device as ``"<name> (compute capability X.Y)"``, or None."""
    try:
        from numba import cuda

        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        return f"{name} (compute capability {'.'.join(map(str, device.compute_capability))})"
    except Exception:  # noqa: BLE001 - no device, no driver: no key
        return None


def _record_key() -> str | None:
    gpu = gpu_name()
    if gpu is None:
        return None
    digest = hashlib.sha256()
    here = Path(__file__).parent
    try:
        for name in CHECKED_SOURCES:
            digest.update((here / name).read_bytes())
    except OSError:
        return None
    return f"{gpu}; numba {numba.__version__}; kernels {digest.hexdigest()[:16]}"


def record_path() -> Path:
    """The file that keeps the verdicts of earlier processes."""
    folder = Path(numba.config.CACHE_DIR) if numba.config.CACHE_DIR else \
        Path(__file__).parent / "__pycache__"
    return folder / RECORD_FILE


def _read_record(key: str) -> tuple[bool, str | None]:
    """(found, reason) of ``key`` in the record file."""
    try:
        entry = json.loads(record_path().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return False, None
    if not isinstance(entry, dict) or not isinstance(entry.get("passed"), bool):
        return False, None
    return True, None if entry["passed"] else str(entry.get("reason") or "a recorded failure")


def _write_record(key: str, reason: str | None) -> None:
    path = record_path()
    try:
        try:
            records = json.loads(path.read_text())
            records = records if isinstance(records, dict) else {}
        except (OSError, ValueError):
            records = {}
        records[key] = {"passed": reason is None, "reason": reason}
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".cuda-self-check-",
                                         suffix=".json", delete=False) as f:
            json.dump(records, f, indent=1)
    except OSError:
        return  # a read-only cache: the check runs again in the next process
    try:
        os.replace(f.name, path)
    except OSError:
        Path(f.name).unlink(missing_ok=True)
