"""Tiny model packages for the runtime tests, written by the exporter.

:func:`write_package` exports a checkpoint of :func:`trained_net` with
:func:`ppp_zoo.export.export_model` (the one writer of the package layout), optionally with
other assembly parameters or a recorded object size written into the checkpoint first, and
without bioimageio.core's model test (the export tests run it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ppp_zoo.postprocess import AssemblyParams


def write_package(checkpoint: Path, folder: Path, *, assembly: AssemblyParams | None = None,
                  object_diameter: float | None = None, zip_it: bool = True) -> Path:
    """Export ``checkpoint`` as ``folder.zip`` (or the folder itself with ``zip_it=False``),
    with ``assembly`` and ``object_diameter`` recorded in place of the checkpoint's."""
    from ppp_zoo.export import export_model

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if assembly is not None:
        ckpt["assembly"] = assembly.to_dict()
    if object_diameter is not None:
        ckpt["training"] = dict(ckpt.get("training") or {}, object_diameter=object_diameter)
    edited = folder.parent / f"{folder.name}.pt"
    torch.save(ckpt, edited)
    output = folder if not zip_it else folder.parent / f"{folder.name}.zip"
    return Path(export_model(edited, output, folder=not zip_it, validate=False).path)


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
