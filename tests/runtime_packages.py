"""Tiny model packages for the runtime tests, written by hand to the package contract.

:func:`write_package` wraps a :class:`~ppp_zoo.model.PatchPerPixNet` (probabilities out),
saves TorchScript and ONNX weights, and writes an rdf.yaml with exactly the fields the
runtime reads, so the runtime is tested independently of the exporter (which has its own
tests, and one of ours runs an exported package too).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch
import yaml
from torch import nn

from ppp_zoo.postprocess import AssemblyParams


class _Probabilities(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, raw):
        numinst, second = self.net(raw)
        return torch.softmax(numinst, dim=1), torch.sigmoid(second)


def write_package(net, folder: Path, *, halo: int, assembly: AssemblyParams,
                  min_size: int | None = None, preprocessing=None, zip_it: bool = True,
                  object_diameter: float | None = None) -> Path:
    """Write ``net`` as a package (folder, then zipped unless ``zip_it`` is False)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ndim, step = net.ndim, net.size_divisor
    min_size = min_size or max(2 * halo + step, 2 * step)
    space = ["z", "y", "x"][3 - ndim:]
    wrapped = _Probabilities(net.eval()).eval()
    example = torch.zeros((1, 1) + (min_size,) * ndim)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(wrapped, example, check_trace=False).save(str(folder / "weights.pt"))
        second = "patches" if net.decoder is None else "codes"
        dyn = {0: "batch"} | {2 + i: n for i, n in enumerate(space)}
        torch.onnx.export(wrapped, (example,), str(folder / "weights.onnx"), dynamo=False,
                          opset_version=17, input_names=["raw"],
                          output_names=["numinst", second],
                          dynamic_axes={n: dyn for n in ("raw", "numinst", second)})
    n_second = net.out_channels
    if preprocessing is None:
        preprocessing = [
            {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
            {"id": "scale_range", "kwargs": {"axes": space, "min_percentile": 1.0,
                                             "max_percentile": 99.8, "eps": 1e-6}}]
    config = {
        "format": 1, "variant": net.variant, "ndim": ndim,
        "patchshape": list(net.patchshape), "assembly": assembly.to_dict(),
        "decoder": None, "halo": [halo] * ndim, "min_shape": [min_size] * ndim,
        "step": [step] * ndim,
        "training": {"object_diameter": object_diameter, "data": "test", "iterations": 0},
        "metrics": {},
    }
    if net.decoder is not None:
        arrays = net.decoder.to_arrays()
        feats = [v.shape[0] for k, v in arrays.items() if k.endswith(".weight")][:-1:2]
        np.savez(folder / "decoder.npz", **arrays,
                 code_shape=np.asarray(net.decoder.code_shape),
                 patchshape=np.asarray(net.patchshape), features=np.asarray(feats))
        config["decoder"] = {"source": "decoder.npz", "code_shape": list(net.decoder.code_shape),
                             "features": feats}
    (folder / "patchperpix.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    sample = rng.poisson(50, (1, 1) + (2 * min_size,) * ndim).astype(np.float32)
    tifffile.imwrite(folder / "sample_raw.tif", sample)

    def out_axes(names):
        return [{"type": "batch"}, {"type": "channel", "channel_names": names}] + [
            {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a},
             "halo": halo} for a in space]

    rdf = {
        "format_version": "0.5.4", "type": "model", "name": "tiny test model",
        "inputs": [{"id": "raw", "axes": [{"type": "batch"},
                                          {"type": "channel", "channel_names": ["raw"]}] + [
            {"type": "space", "id": a, "size": {"min": min_size, "step": step}} for a in space],
            "data": {"type": "float32"}, "preprocessing": preprocessing,
            "sample_tensor": {"source": "sample_raw.tif"}}],
        "outputs": [{"id": "numinst", "axes": out_axes(["n0", "n1", "n2"])},
                    {"id": second, "axes": out_axes([f"c{i}" for i in range(n_second)])}],
        "weights": {"torchscript": {"source": "weights.pt", "pytorch_version": "2.13"},
                    "onnx": {"source": "weights.onnx", "opset_version": 17,
                             "parent": "torchscript"}},
        "config": {"patchperpix": config},
    }
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    if not zip_it:
        return folder
    return Path(shutil.make_archive(str(folder), "zip", folder))


def trained_net(out_dir: Path, ndim: int = 2, variant: str = "ppp", iterations: int = 30):
    """A tiny PatchPerPix net trained for a few steps on synthetic nuclei (seconds), and
    the path of its checkpoint."""
    from ppp_zoo.predict import load_checkpoint
    from ppp_zoo.train import train

    size = [64, 64] if ndim == 2 else [16, 32, 32]
    crop = [32, 32] if ndim == 2 else [16, 16, 16]
    patch = [7, 7] if ndim == 2 else [3, 3, 3]
    cfg = {
        "data": {"source": "synth-nuclei", "n_images": 3, "image_size": size,
                 "val_fraction": 0.34, "seed": 1, "synth": {"n_nuclei": 8}},
        "model": {"patchshape": patch, "base_features": 4, "depth": 2, "variant": variant},
        "train": {"iterations": iterations, "batch_size": 2, "crop_size": crop, "lr": 3e-3,
                  "val_every": iterations, "seed": 0},
    }
    train(cfg, out_dir, device="cpu", progress=False)
    return load_checkpoint(Path(out_dir) / "last.pt").model, Path(out_dir) / "last.pt"
