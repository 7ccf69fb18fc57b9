"""Whether the CUDA assembly kernels can run in this process.

Kept apart from the kernels (``_cuda_kernels.py``), which import ``numba.cuda`` and define
every kernel: :func:`unavailable_reason` asks numba for a GPU and a compiler,
:func:`cuda_errors` names the exception types of a driver or compiler failure.
``numba.cuda`` is imported only when one of them is called.
"""

from __future__ import annotations

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
