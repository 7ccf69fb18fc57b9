"""The network as exported: one output tensor, output size == input size, traced and ONNX.

:class:`ExportNet` wraps a :class:`~ppp_zoo.model.PatchPerPixNet` without its patch (or
code) head: the output is the numinst probabilities followed by the U-Net's last features,
from which the head (a 1x1 convolution, shipped as ``head.npz``) computes the patches or
codes per pixel. That is the same information in ``3 + F`` channels instead of ``3 + P``
(``F`` = the U-Net's base features, 12-40; ``P`` = 289 for a 17x17 patch), which keeps the
tiles that ilastik and deepImageJ move around small. The exported input sizes
are multiples of the U-Net's ``size_divisor`` (declared as ``min + n * step``), on which the
same-padded U-Net keeps the input size, so the wrapper needs no padding of its own and its
graph holds no size-dependent operation: one trace serves every declared size.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..model import ExportNet

__all__ = ["ONNX_OPSET", "ExportNet", "run_onnx", "run_torchscript", "save_onnx",
           "save_torchscript"]

#: ONNX opset of the exported file (readable by ONNX Runtime builds that stop at opset 18)
ONNX_OPSET = 17


def _space_names(ndim: int) -> list[str]:
    return ["z", "y", "x"][3 - ndim:]


def save_torchscript(model: ExportNet, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace ``model`` on ``example`` and save the TorchScript file."""
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(path))
    return path


def save_onnx(model: ExportNet, example: torch.Tensor, path: str | os.PathLike,
              output_names: tuple[str, ...]) -> Path:
    """Export ``model`` to one self-contained ONNX file, opset 17, dynamic batch and space axes."""
    path = Path(path)
    ndim = example.ndim - 2
    axes = {0: "batch"} | {2 + i: name for i, name in enumerate(_space_names(ndim))}
    names = ("raw",) + tuple(output_names)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[names[0]], output_names=list(names[1:]),
                          dynamic_axes={n: axes for n in names})
    return path


def run_torchscript(path: str | os.PathLike, x: np.ndarray) -> list[np.ndarray]:
    """Outputs of a saved TorchScript model on ``x``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        outs = module(torch.from_numpy(x))
    return [o.numpy() for o in ((outs,) if isinstance(outs, torch.Tensor) else outs)]


def run_onnx(path: str | os.PathLike, x: np.ndarray) -> list[np.ndarray]:
    """Outputs of an ONNX model on ``x`` with ONNX Runtime (CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})
