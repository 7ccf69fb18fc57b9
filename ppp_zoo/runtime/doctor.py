"""What this installation runs on: the ``ppp-zoo doctor`` report, and the probes ``segment``
uses to pick its device.

- :func:`onnxruntime_distributions` and :func:`onnxruntime_conflict`: the ONNX Runtime
  distributions installed, read from package metadata. ``onnxruntime`` (CPU) and
  ``onnxruntime-gpu`` both write the one ``onnxruntime`` module; with both installed, the
  files of the one installed last win, so a GPU user may silently get the CPU build.
- :func:`probe_gpu`: the NVIDIA GPUs the CUDA driver shows this process (through ctypes:
  no torch, no subprocess; it honours ``CUDA_VISIBLE_DEVICES``).
- :func:`preload_cuda_libraries`: load the CUDA and cuDNN libraries of the ``nvidia-*``
  pip packages (``onnxruntime-gpu[cuda,cudnn]``) so that the CUDA provider finds them.
- :func:`check_cuda_session`: run the embedded model once with the CUDA provider, in a
  child process with a time limit (``_cuda_check.py``), so that a broken driver cannot take
  the caller down.
- :func:`collect_report` -> :class:`DoctorReport`: all of the above with numba, torch and
  the platform, as text or JSON (what a bug report needs).

Nothing here imports torch unless the report asks for it and it is installed, and no
probe raises: a failure is reported as a reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
ORT_MODULE = "onnxruntime"
# The documented GPU install, after the plain one (see also repair_command).
GPU_INSTALL = 'pip uninstall -y onnxruntime && pip install "onnxruntime-gpu[cuda,cudnn]"'
CUDA_CHECK_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- ONNX Runtime
def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def onnxruntime_distributions() -> tuple[tuple[str, str], ...]:
    """Installed distributions that provide the ``onnxruntime`` module, as ``(name,
    version)`` sorted by name (``onnxruntime``, ``onnxruntime-gpu``, ``onnxruntime-directml``,
    ...); ``onnxruntime-extensions`` and other add-ons with their own module are left out.
    """
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = _normalise(dist.metadata.get("Name") or "")
        if name != ORT_MODULE and not name.startswith(ORT_MODULE + "-"):
            continue
        files = dist.files or []
        if any(f.parts and f.parts[0] == ORT_MODULE for f in files):
            found.setdefault(name, dist.version)
    return tuple(sorted(found.items()))


def cuda_pip_packages() -> tuple[tuple[str, str], ...]:
    """The NVIDIA library packages installed from pip (``nvidia-cublas``, ``nvidia-cudnn-cu13``,
    ...) as ``(name, version)``: where the CUDA provider's libraries come from, unless the
    system has them."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = _normalise(dist.metadata.get("Name") or "")
        if name.startswith("nvidia-"):
            found.setdefault(name, dist.version)
    return tuple(sorted(found.items()))


def onnxruntime_conflict(distributions: tuple[tuple[str, str], ...] | None = None) -> str | None:
    """One sentence saying how to repair an install with several ONNX Runtime builds, or
    None when at most one is installed.

    >>> onnxruntime_conflict((("onnxruntime", "1.32.0"),)) is None
    True
    >>> print(onnxruntime_conflict((("onnxruntime", "1.32.0"), ("onnxruntime-gpu", "1.31.1"))))
    ... # doctest: +NORMALIZE_WHITESPACE
    onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1 are both installed and write the same
    onnxruntime module, so the CPU build may hide the GPU one; keep only the GPU build:
    pip uninstall -y onnxruntime onnxruntime-gpu && pip install "onnxruntime-gpu[cuda,cudnn]"
    (or run with --device cpu)
    """
    dists = sorted(onnxruntime_distributions() if distributions is None else distributions)
    if len(dists) < 2:
        return None
    names = [name for name, _ in dists]
    listed = " and ".join(f"{name} {version}" for name, version in dists)
    if "onnxruntime-gpu" in names:
        hidden = "the CPU build may hide the GPU one" if ORT_MODULE in names else \
            "one build hides another"
        fix = f"keep only the GPU build: {repair_command(dists)}"
    else:
        hidden, fix = "one build hides another", f"keep only one: {repair_command(dists)}"
    return (f"{listed} are {'both' if len(names) == 2 else 'all'} installed and write the "
            f"same onnxruntime module, so {hidden}; {fix} (or run with --device cpu)")


def repair_command(distributions: tuple[tuple[str, str], ...] | None = None) -> str:
    """The pip command that leaves one working ONNX Runtime: the GPU build if one of the
    installed distributions is the GPU build. Every installed one is uninstalled first,
    because they share files (removing one deletes files of the other).

    >>> repair_command(())
    'pip install onnxruntime'
    >>> repair_command((("onnxruntime-gpu", "1.31.1"),))
    'pip uninstall -y onnxruntime-gpu && pip install "onnxruntime-gpu[cuda,cudnn]"'
    """
    dists = onnxruntime_distributions() if distributions is None else distributions
    names = sorted(name for name, _ in dists)
    if not names:
        return "pip install onnxruntime"
    keep = '"onnxruntime-gpu[cuda,cudnn]"' if "onnxruntime-gpu" in names else names[-1]
    return f"pip uninstall -y {' '.join(names)} && pip install {keep}"


@dataclasses.dataclass(frozen=True)
class OrtInfo:
    """The ONNX Runtime that ``import onnxruntime`` gives."""

    version: str | None
    build: str | None
    """The distribution whose files answer the import (``onnxruntime``, ``onnxruntime-gpu``)."""
    cuda_version: str | None
    """The CUDA version the build was made for (None for a CPU build)."""
    providers: tuple[str, ...]
    distributions: tuple[tuple[str, str], ...]
    error: str | None = None
    """Why ``import onnxruntime`` failed (None when it worked)."""

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "build": self.build, "cuda_version": self.cuda_version,
                "providers": list(self.providers),
                "distributions": {name: version for name, version in self.distributions},
                "error": self.error}


def onnxruntime_info() -> OrtInfo:
    """What ``import onnxruntime`` gives: version, build, providers (never raises)."""
    dists = onnxruntime_distributions()
    try:
        import onnxruntime as ort

        return OrtInfo(version=getattr(ort, "__version__", None),
                       build=getattr(ort, "package_name", None) or None,
                       cuda_version=getattr(ort, "cuda_version", None) or None,
                       providers=tuple(ort.get_available_providers()), distributions=dists)
    except Exception as err:  # noqa: BLE001 - a broken install raises anything
        return OrtInfo(None, None, None, (), dists, error=_first_line(err))


@functools.lru_cache(maxsize=1)
def preload_cuda_libraries() -> tuple[str, ...]:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` pip packages so that ONNX
    Runtime's CUDA provider finds them (``onnxruntime.preload_dlls``; libraries on the
    system search path are used as they are). Returns the load failures it reported, for
    an error message; its printout is kept off stdout (``segment --json`` writes there).
    """
    try:
        import onnxruntime as ort

        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            return ()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as err:  # noqa: BLE001
        return (_first_line(err),)
    return tuple(line.strip() for line in printed.getvalue().splitlines()
                 if line.strip().startswith("Failed"))


# --------------------------------------------------------------------------- GPU
@dataclasses.dataclass(frozen=True)
class GpuProbe:
    """NVIDIA GPUs visible to this process, as the CUDA driver reports them."""

    visible: bool
    devices: tuple[str, ...] = ()
    """Name and memory of each device, e.g. ``"NVIDIA H200, 139.8 GiB"``."""
    driver_cuda: str | None = None
    """The newest CUDA version the driver supports, e.g. ``"13.0"``."""
    reason: str = ""
    """Why no GPU is visible (empty when one is)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"devices": list(self.devices)}


_DRIVER_NAMES = {"win32": ("nvcuda.dll",), "darwin": ()}


@functools.lru_cache(maxsize=1)
def probe_gpu() -> GpuProbe:
    """The NVIDIA GPUs the CUDA driver shows this process (cached; never raises).

    Loads the driver library (``libcuda.so.1``) with ctypes and asks it for the devices;
    this is what CUDA programs, ONNX Runtime's CUDA provider among them, see.
    """
    try:
        return _probe_gpu()
    except Exception as err:  # noqa: BLE001 - ctypes and odd drivers raise anything
        return GpuProbe(False, reason=f"the CUDA driver query failed ({_first_line(err)})")


def _probe_gpu() -> GpuProbe:
    names = _DRIVER_NAMES.get(sys.platform, ("libcuda.so.1", "libcuda.so"))
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return GpuProbe(False, reason="no NVIDIA driver (libcuda not found)" if names
                        else f"no CUDA on {platform.system()}")
    version = ctypes.c_int(0)
    driver = None
    if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
        driver = f"{version.value // 1000}.{version.value % 1000 // 10}"
    code = lib.cuInit(0)
    if code != 0:
        return GpuProbe(False, driver_cuda=driver,
                        reason=f"the CUDA driver found no usable GPU ({_cuda_error(lib, code)})")
    count = ctypes.c_int(0)
    code = lib.cuDeviceGetCount(ctypes.byref(count))
    if code != 0 or count.value == 0:
        why = _cuda_error(lib, code) if code else "0 devices; CUDA_VISIBLE_DEVICES=" + \
            os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
        return GpuProbe(False, driver_cuda=driver, reason=f"the CUDA driver lists no GPU ({why})")
    devices = []
    for i in range(count.value):
        handle = ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        memory = ctypes.c_size_t(0)
        if lib.cuDeviceGet(ctypes.byref(handle), i) != 0:
            continue
        lib.cuDeviceGetName(name, 256, handle)
        total = getattr(lib, "cuDeviceTotalMem_v2", None)
        text = name.value.decode(errors="replace") or f"device {i}"
        if total is not None and total(ctypes.byref(memory), handle) == 0:
            text += f", {memory.value / 2**30:.1f} GiB"
        devices.append(text)
    return GpuProbe(True, devices=tuple(devices), driver_cuda=driver)


def _cuda_error(lib, code: int) -> str:
    text = ctypes.c_char_p()
    with contextlib.suppress(Exception):
        if lib.cuGetErrorString(code, ctypes.byref(text)) == 0 and text.value:
            return f"CUDA error {code}: {text.value.decode(errors='replace')}"
    return f"CUDA error {code}"


# --------------------------------------------------------------------------- CUDA session
@dataclasses.dataclass(frozen=True)
class CudaCheck:
    """Whether the embedded model ran on the CUDA provider (or why it was not tried)."""

    tried: bool
    ok: bool
    detail: str
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_cuda_session(ort: OrtInfo, gpu: GpuProbe,
                       timeout: float = CUDA_CHECK_TIMEOUT_S) -> CudaCheck:
    """Run the embedded model once on the CUDA provider in a child process (never raises).

    Not tried when the ONNX Runtime has no CUDA provider or no GPU is visible.
    """
    if CUDA_PROVIDER not in ort.providers:
        return CudaCheck(False, False, "this ONNX Runtime has no CUDA provider")
    if not gpu.visible:
        return CudaCheck(False, False, "no GPU visible")
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from ppp_zoo.runtime._cuda_check import main; main()"],
            capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return CudaCheck(True, False, f"no answer within {timeout:.0f} s")
    except OSError as err:
        return CudaCheck(False, False, f"cannot start {sys.executable} ({err.strerror or err})")
    seconds = round(time.perf_counter() - t0, 2)
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
        ok, detail = bool(answer["ok"]), str(answer["detail"])
        # ONNX Runtime logs why the provider did not start on stderr, not in an exception
        logged = re.search(r"Failed to (?:load|create)[^\n\x1b]*", done.stderr)
        if not ok and logged:
            detail += f"; ONNX Runtime: {logged.group(0).strip()}"
        return CudaCheck(True, ok, detail, seconds)
    except (IndexError, ValueError, KeyError, TypeError):
        err = [s for s in done.stderr.strip().splitlines() if s.strip()]
        why = err[-1].strip() if err else f"exit code {done.returncode}"
        return CudaCheck(True, False, f"the check process failed: {why}", seconds)


# --------------------------------------------------------------------------- report
@dataclasses.dataclass(frozen=True)
class DoctorReport:
    """What ``ppp-zoo doctor`` prints; ``to_dict`` for ``--json``, ``format`` for text."""

    ppp_zoo: str
    python: str
    platform: str
    onnxruntime: OrtInfo
    gpu: GpuProbe
    cuda_libraries: tuple[tuple[str, str], ...]
    """The ``nvidia-*`` library packages installed from pip."""
    cuda_session: CudaCheck
    auto_device: str
    """What ``segment --device auto`` runs on with the ONNX engine."""
    numba: dict[str, Any]
    torch: dict[str, Any] | None
    numpy: str | None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ppp_zoo": self.ppp_zoo, "python": self.python, "platform": self.platform,
                "onnxruntime": self.onnxruntime.to_dict(), "gpu": self.gpu.to_dict(),
                "cuda_libraries": dict(self.cuda_libraries),
                "cuda_session": self.cuda_session.to_dict(), "auto_device": self.auto_device,
                "numba": self.numba, "torch": self.torch, "numpy": self.numpy,
                "warnings": list(self.warnings)}

    def format(self) -> str:
        ort, gpu = self.onnxruntime, self.gpu
        if ort.error:
            ort_line = f"cannot import ({ort.error})"
        else:
            kind = f"GPU build for CUDA {ort.cuda_version}" if ort.cuda_version else "CPU build"
            ort_line = f"{ort.version}, {kind} (package {ort.build or 'unknown'})"
        dists = ", ".join(f"{n} {v}" for n, v in ort.distributions) or "none"
        if gpu.visible:
            gpu_line = "; ".join(gpu.devices) + f" (driver supports CUDA {gpu.driver_cuda})"
        else:
            gpu_line = f"none visible: {gpu.reason}" + \
                (f" (driver supports CUDA {gpu.driver_cuda})" if gpu.driver_cuda else "")
        libs = ", ".join(f"{n.removeprefix('nvidia-')} {v}" for n, v in self.cuda_libraries) \
            or "none from pip (the system's are used, if any)"
        check = self.cuda_session
        check_line = (("works: " if check.ok else "fails: ") + check.detail) if check.tried \
            else f"not tried: {check.detail}"
        numba = self.numba
        numba_line = (f"{numba['version']}, {numba['threads']} threads, cache "
                      f"{numba['cache_dir']} ({numba['cache_index_files']} kernel index files)"
                      if numba.get("version") else f"not importable ({numba.get('error')})")
        if self.torch is None:
            torch_line = "not installed"
        elif self.torch.get("error"):
            torch_line = f"not importable ({self.torch['error']})"
        else:
            cuda = self.torch["cuda"]
            gpu_state = "available" if self.torch["cuda_available"] else "not available"
            torch_line = f"{self.torch['version']}, " + (
                f"CUDA {cuda}, GPU {gpu_state}" if cuda else "CPU build")
        rows = [
            ("ppp-zoo", self.ppp_zoo),
            ("python", self.python),
            ("platform", self.platform),
            ("onnxruntime", ort_line),
            ("  installed", dists),
            ("  providers", ", ".join(ort.providers) or "none"),
            ("GPU", gpu_line),
            ("CUDA libraries", libs),
            ("CUDA session", check_line),
            ("segment --device auto", self.auto_device),
            ("numba", numba_line),
            ("torch", torch_line),
            ("numpy", self.numpy or "not importable"),
        ]
        width = max(len(k) for k, _ in rows) + 2
        lines = [f"{k + ':':<{width}}{v}" for k, v in rows]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def collect_report(cuda_check_timeout: float = CUDA_CHECK_TIMEOUT_S) -> DoctorReport:
    """Probe the installation (a few seconds; the CUDA check runs only with a GPU)."""
    from .. import __version__

    ort = onnxruntime_info()
    gpu = probe_gpu()
    check = check_cuda_session(ort, gpu, timeout=cuda_check_timeout)
    warnings = []
    conflict = onnxruntime_conflict(ort.distributions)
    if conflict:
        warnings.append(conflict)
    if ort.error and not conflict:
        warnings.append(f"ONNX Runtime cannot be used ({ort.error}); reinstall it: "
                        f"{repair_command(ort.distributions)}")
    elif gpu.visible and CUDA_PROVIDER not in ort.providers:
        warnings.append(f"a GPU is visible but this ONNX Runtime has no CUDA provider; "
                        f"install the GPU build: {GPU_INSTALL}")
    if conflict:
        auto = "refuses to run: two ONNX Runtime builds (see the warning); --device cpu runs"
    elif ort.error:
        auto = "cannot run (no ONNX Runtime)"
    elif check.ok:
        auto = f"cuda ({CUDA_PROVIDER})"
    elif check.tried:
        auto = f"cpu ({CPU_PROVIDER}; the CUDA provider fails, see CUDA session)"
    else:
        auto = f"cpu ({CPU_PROVIDER})"
    return DoctorReport(
        ppp_zoo=__version__,
        python=f"{platform.python_version()} ({platform.python_implementation()}, "
               f"{sys.executable})",
        platform=f"{platform.platform()}, {os.cpu_count()} CPUs",
        onnxruntime=ort, gpu=gpu, cuda_libraries=cuda_pip_packages(), cuda_session=check,
        auto_device=auto,
        numba=_numba_info(), torch=_torch_info(), numpy=_version_of("numpy"),
        warnings=tuple(warnings))


def _numba_info() -> dict[str, Any]:
    try:
        import numba

        from .. import (
            postprocess,  # importing it points numba's cache at a writable folder
        )

        folder = Path(numba.config.CACHE_DIR) if numba.config.CACHE_DIR else \
            Path(postprocess.__file__).parent / "__pycache__"
        cached = sum(1 for _ in folder.rglob("_kernels.*.nbi")) if folder.is_dir() else 0
        return {"version": numba.__version__, "threads": int(numba.config.NUMBA_NUM_THREADS),
                "cache_dir": str(folder), "cache_index_files": cached}
    except Exception as err:  # noqa: BLE001
        return {"version": None, "error": _first_line(err)}


def _torch_info() -> dict[str, Any] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        return {"version": torch.__version__, "cuda": torch.version.cuda,
                "cuda_available": bool(torch.cuda.is_available())}
    except Exception as err:  # noqa: BLE001 - a broken torch install raises anything
        return {"version": _version_of("torch"), "error": _first_line(err)}


def _version_of(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
