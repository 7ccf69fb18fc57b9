"""Inference engines for a model package: ONNX Runtime (default) and TorchScript.

An engine maps the preprocessed input ``(1, C, [Z,] Y, X)`` float32 to the package's
outputs, as a list of float32 arrays in rdf order (``numinst``, then ``patches`` or
``codes``). Create one with :func:`create_engine` and release it with ``close()`` or a
``with`` block. Only the TorchScript engine imports torch, and only when it is created.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..errors import SetupError, UserError, describe
from . import doctor
from .package import ModelPackage

EngineName = Literal["onnx", "torchscript"]
Device = Literal["auto", "cpu", "cuda"]
ENGINES: tuple[str, ...] = ("onnx", "torchscript")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class Engine:
    """Base class: a loaded network that runs one input tensor."""

    name: str = ""
    device: str = "cpu"
    provider: str = ""
    """What runs the network: an ONNX Runtime execution provider, or ``torch``."""
    device_note: str | None = None
    """Why the engine runs on another device than ``auto`` would have liked (or None)."""

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the session (the engine cannot be used afterwards)."""

    def __enter__(self) -> Engine:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OnnxEngine(Engine):
    """ONNX Runtime session on the CUDA provider or the CPU.

    ``auto`` takes the CUDA provider when this ONNX Runtime has it and the CUDA driver shows
    a GPU, else the CPU without trying (``device_note`` says why when a GPU is visible);
    ``cuda`` fails with one clear message when either is missing or the provider does not
    start. With two ONNX Runtime builds installed (``onnxruntime`` and ``onnxruntime-gpu``
    share one module) only ``cpu`` runs: the others raise the command that repairs it.
    """

    name = "onnx"

    def __init__(self, model: bytes, output_ids: Sequence[str], device: Device = "auto",
                 threads: int | None = None):
        if device != "cpu":
            conflict = doctor.onnxruntime_conflict()
            if conflict is not None:
                raise SetupError(conflict)
        try:
            import onnxruntime as ort

            has_cuda = doctor.CUDA_PROVIDER in ort.get_available_providers()
        except Exception as err:  # noqa: BLE001 - a half-removed install raises anything
            raise SetupError(f"ONNX Runtime cannot be used ({type(err).__name__}: {err}); "
                               f"reinstall it: {doctor.repair_command()}") from None
        if device == "cuda" and not has_cuda:
            build = getattr(ort, "package_name", "") or "onnxruntime"
            raise SetupError(f"--device cuda: this ONNX Runtime ({build} "
                               f"{getattr(ort, '__version__', '')}) has no CUDA provider; "
                               f"install the GPU build: {doctor.GPU_INSTALL}")
        gpu = doctor.probe_gpu() if device != "cpu" else None
        if device == "cuda" and not gpu.visible:
            raise SetupError(f"--device cuda: no usable GPU: {gpu.reason}")
        use_cuda = has_cuda and gpu is not None and gpu.visible
        if gpu is not None and gpu.visible and not has_cuda:
            self.device_note = ("a GPU is visible but this ONNX Runtime is a CPU build: ran on "
                                f"the CPU; for the GPU build: {doctor.GPU_INSTALL}")
        failures = doctor.preload_cuda_libraries() if use_cuda else ()
        providers = [doctor.CUDA_PROVIDER, doctor.CPU_PROVIDER] if use_cuda \
            else [doctor.CPU_PROVIDER]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = False  # the arena keeps its peak for the session
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self._session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
            raise UserError(f"cannot load the ONNX weights ({type(err).__name__}: "
                             f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})"
                             ) from None
        self.provider = self._session.get_providers()[0]
        self.device = "cuda" if self.provider == doctor.CUDA_PROVIDER else "cpu"
        if use_cuda and self.device != "cuda":
            why = failures[0] if failures else "see the ONNX Runtime messages above"
            if device == "cuda":
                raise SetupError(f"--device cuda: the CUDA provider could not start ({why}); "
                                   "'ppp-zoo doctor' shows the setup")
            self.device_note = (f"a GPU is visible but the CUDA provider could not start "
                                f"({why}): ran on the CPU; 'ppp-zoo doctor' shows the setup")
        self._input = self._session.get_inputs()[0].name
        names = [o.name for o in self._session.get_outputs()]
        # outputs by id when the graph names them so, else in rdf order
        self._outputs = [i for i in output_ids if i in names] if set(output_ids) <= set(names) \
            else names[:len(output_ids)]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        outs = self._session.run(self._outputs, {self._input: np.ascontiguousarray(x, np.float32)})
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def close(self) -> None:
        self._session = None


class TorchScriptEngine(Engine):
    """TorchScript module run with torch (imported here, lazily)."""

    name = "torchscript"

    def __init__(self, model: bytes, device: Device = "auto"):
        try:
            import torch
        except ImportError:
            raise SetupError("the torchscript engine needs PyTorch (pip install torch), "
                               "or use --engine onnx") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise SetupError("--device cuda: PyTorch sees no CUDA GPU")
        self.device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self.provider = "torch"
        self._torch = torch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit notices
                self._module = torch.jit.load(io.BytesIO(model), map_location=self.device).eval()
        except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt files
            raise UserError(f"cannot load the TorchScript weights ({describe(err)})") from None

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
            outs = self._module(t)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return [o.detach().float().cpu().numpy() for o in outs]

    def close(self) -> None:
        self._module = None


def create_engine(package: ModelPackage, engine: EngineName = "onnx",
                  device: Device = "auto", threads: int | None = None) -> Engine:
    """Load the package's weights for ``engine`` on ``device``.

    ``threads`` limits ONNX Runtime's intra-op threads (default: one per core); the
    TorchScript engine follows ``torch.set_num_threads``.

    Raises
    ------
    ValueError
        Unknown engine or device, missing or unreadable weights.
    RuntimeError
        The engine's library or the device is not available.
    """
    if engine not in ENGINES:
        raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if device not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if engine not in package.weights:
        raise UserError(f"{package.source}: the package has no {engine} weights "
                         f"(it has: {', '.join(sorted(package.weights))})")
    data = package.read_bytes(package.weights[engine])
    if engine == "onnx":
        return OnnxEngine(data, package.output_ids, device, threads)
    return TorchScriptEngine(data, device)
