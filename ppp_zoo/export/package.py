"""Build a bioimage.io model package from a training checkpoint (see the package docstring).

:func:`export_model` is the one public entry point. It works in a temporary folder next to
the output, validates the finished package with bioimageio.core's test for every weight
format, and only then moves it into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from .. import __version__
from ..errors import SetupError, UserError
from ..predict import (
    NORMALIZE_EPS,
    OUTPUT_ID,
    Geometry,
    ModelBundle,
    decoder_arrays,
    head_arrays,
    load_checkpoint,
    normalize_image,
    package_geometry,
    patchperpix_info,
    predict_probabilities,
)
from ..runtime.readers import write_reader_forms
from .validation import WEIGHT_FORMATS, ValidationRow, format_table, validate_package
from .wrapper import (
    ONNX_OPSET,
    ExportNet,
    run_onnx,
    run_torchscript,
    save_onnx,
    save_torchscript,
)

PATCHPERPIX_DOI = "10.1007/978-3-030-58595-2_18"
PATCHPERPIX_ARXIV_DOI = "10.48550/arXiv.2001.07626"
DEFAULT_AUTHORS = ("ppp-zoo developers",)
#: tolerances stored in the package for bioimageio.core's reproducibility check
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4
#: test tensors are at the minimal size; the sample input and cover use at most this size
SAMPLE_SIZE = {2: 256, 3: 48}
#: share of the test input clipped at each end, so that the normalisation percentiles fall
#: on ties (deepImageJ takes nearest-rank percentiles, bioimageio.core interpolates)
CLIP_FRACTION = 0.03
IJ_MACRO = "deepimagej_run.ijm"

Progress = Callable[[str], None] | None


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote.

    ``max_abs_diff`` maps ``"torchscript"`` / ``"onnx"`` to the largest absolute difference
    of its outputs from the eager PyTorch outputs on the test input.
    """

    path: str
    size_bytes: int
    seconds: float
    variant: str
    weight_formats: tuple[str, ...]
    validation: tuple[ValidationRow, ...]
    max_abs_diff: dict
    checked_with: tuple[dict, ...] = ()

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def table(self) -> str:
        lines = [format_table(list(self.validation))]
        if self.checked_with:
            lines += ["", "readers (config.ppp_zoo.checked_with):"]
            lines += [f"  {r['result']:<11} {r['reader']} ({r['used_by']})"
                      for r in self.checked_with]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["validation"] = [row.to_dict() for row in self.validation]
        return d


# --------------------------------------------------------------------------- validation
NAME_CHARACTERS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   "_+- ()")
"""Characters bioimage.io allows in a model name."""


NICKNAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789-_"


def _slug(name: str) -> str:
    text = "".join(c if c in NICKNAME_CHARACTERS else "-" for c in name.lower())
    while "--" in text:
        text = text.replace("--", "-")
    return text.strip("-_")[:64] or "patchperpix-model"


def _check_nickname(nickname: str) -> str:
    bad = sorted(set(nickname) - set(NICKNAME_CHARACTERS))
    if bad or not 3 <= len(nickname) <= 64 or not nickname[0].isalnum():
        raise UserError(f"nickname {nickname!r}: use 3-64 lowercase letters, digits, - and _ "
                         f"starting with a letter or digit (found {''.join(bad) or 'a bad length'})")
    return nickname


def _validate_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in WEIGHT_FORMATS]
    if unknown or not formats:
        raise UserError(f"weight formats must be among {', '.join(WEIGHT_FORMATS)}, "
                         f"got {', '.join(formats) or 'none'}")
    return tuple(f for f in WEIGHT_FORMATS if f in formats)


def _check_output(output: Path, folder: bool) -> None:
    """Fail early (before any work) when ``output`` cannot be written."""
    if output.exists() and output.is_dir() != folder:
        kind = "a folder" if output.is_dir() else "a file"
        raise UserError(f"{output}: exists and is {kind}")
    if not folder and output.suffix.lower() != ".zip":
        raise UserError(f"{output}: a model package file must end in .zip (or use --folder)")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{parent}: no such folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise OSError(err.errno, f"cannot write into {parent} ({err.strerror})",
                      str(output)) from None


# --------------------------------------------------------------------------- data
def _example_image(bundle: ModelBundle, geometry: Geometry):
    """The validation or training image whose smallest side is largest (normalised) and its
    labels, for the test input, the sample and the cover; synthetic nuclei when the training
    data cannot be loaded any more."""
    from ..config import config_from_dict

    image, target = None, None
    with contextlib.suppress(Exception):
        from ..train import load_training_data

        train, val = load_training_data(config_from_dict(bundle.config))
        image, target = max(val + train, key=lambda pair: min(pair[0].shape))
    if image is None:
        from ..data.synth import synth_nuclei_dataset

        shape = (SAMPLE_SIZE[geometry.ndim],) * geometry.ndim
        pair = synth_nuclei_dataset(1, seed=0, shape=shape)[0]
        image, target = normalize_image(pair[0], bundle.normalize), pair[1]
    return np.asarray(image, np.float32), target


def _fit(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Centre crop (or mirror pad) ``image`` to ``size``."""
    pad = [(0, max(0, s - n)) for n, s in zip(image.shape, size)]
    if any(p for _, p in pad):
        image = np.pad(image, pad, mode="symmetric")
    start = [(n - s) // 2 for n, s in zip(image.shape, size)]
    return np.ascontiguousarray(image[tuple(slice(a, a + s) for a, s in zip(start, size))])


def _as_raw(normalized: np.ndarray) -> np.ndarray:
    """Intensities in a camera-like range: the preprocessing maps them back (it is affine
    invariant), so the test input exercises the declared normalisation."""
    return (np.asarray(normalized, np.float32) * 1000.0 + 1000.0).astype(np.float32)


def _with_tied_percentiles(raw: np.ndarray, normalize) -> np.ndarray:
    """``raw`` clipped (like a saturated camera and a flat background) at the values
    ``CLIP_FRACTION`` beyond the normalisation percentiles, so that every percentile
    definition (nearest rank, linear interpolation) gives exactly the clip values.

    Only percentile normalisation needs it; mean/std are the same everywhere.
    """
    if normalize.mode != "percentile":
        return raw
    values = np.sort(raw.ravel())
    n = len(values)
    lo_rank = int(n * min(normalize.p_low / 100 + CLIP_FRACTION, 0.45))
    hi_rank = int(n * max(normalize.p_high / 100 - CLIP_FRACTION, 0.55))
    return np.clip(raw, values[lo_rank], values[hi_rank]).astype(np.float32)


def _reference_output(model: ExportNet, raw: np.ndarray, normalize):
    """Test output as bioimageio.core's model test computes it: the declared
    preprocessing, then the network on exactly the test input (no halo padding)."""
    x = np.stack([normalize_image(b[0], normalize)[None] for b in raw])
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x)))
    return x, np.ascontiguousarray(out.numpy())


# --------------------------------------------------------------------------- pictures
def _instance_colours(labels: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    n = int(labels.max(initial=0))
    colours = np.concatenate([np.zeros((1, 3)), rng.uniform(0.25, 1.0, size=(n, 3))])
    return colours[labels]


def _write_cover(path: Path, image: np.ndarray, numinst: np.ndarray, labels: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if labels.dtype == bool:  # overlapping masks: show each pixel's first instance
        labels = (np.where(labels.any(axis=0), labels.argmax(axis=0) + 1, 0) if len(labels)
                  else np.zeros(image.shape, np.int32))
    if image.ndim == 3:  # 3D: the middle slice
        z = image.shape[0] // 2
        image, numinst, labels = image[z], numinst[:, z], labels[z]
    rgb = np.stack([numinst[2], numinst[1], np.zeros_like(numinst[1])], axis=-1)
    fig = Figure(figsize=(12, 6), dpi=100)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.9, wspace=0.04)
    panels = [("input", image, "gray"), ("numinst: green 1, red 2+", np.clip(rgb, 0, 1), None),
              (f"instances ({int(labels.max(initial=0))})", _instance_colours(labels), None)]
    for i, (title, data, cmap) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(path)


def _documentation(name: str, info: dict, geometry: Geometry, diffs: dict,
                   formats: Sequence[str], validated: bool = True) -> str:
    ppp = info
    variant = ppp["variant"]
    shape = "x".join(map(str, ppp["patchshape"]))
    training = ppp["training"]
    metrics = ppp["metrics"] or {}
    lo, hi = ppp["output"]["channels"]["features"]
    n_out = hi
    lines = [f"# {name}", "",
             ("PatchPerPix instance segmentation: a U-Net predicts, for every pixel, how many "
              "instances cover it (`numinst`) and the shape of its instance in a "
              f"{shape} patch around it. The instances are assembled from these patches by "
              "the `ppp_zoo.postprocess` package (numpy + numba, no deep learning framework "
              "needed)."), "",
             "## Inputs and outputs", "",
             (f"- `raw` (batch, channel, {', '.join(geometry.axes)}): one grayscale channel; "
              f"sizes `{geometry.min_size} + n * {geometry.step}` per space axis. The "
              "preprocessing in `rdf.yaml` "
              f"({ppp['normalize']['mode']} normalisation) is the one used in training."),
             (f"- `{OUTPUT_ID}` (batch, channel, {', '.join(geometry.axes)}), {n_out} channels: "
              "`n0`-`n2` are the probabilities of 0, 1 and 2+ instances (softmax); "
              f"`f0`-`f{hi - lo - 1}` are the network's last feature maps. The patch head "
              "(`head.npz`, a 1x1 convolution and a sigmoid) turns a pixel's features into its "
              + ("patch" if variant == "ppp" else
                 "code, which the decoder (`decoder.npz`) expands into its patch")
              + "; `ppp_zoo.postprocess` applies both, only where the assembly needs them. "
              "The features are shipped instead of the patches because they hold the same "
              f"information in {n_out} instead of {3 + math.prod(ppp['patchshape'])} channels."),
             (f"- Tiling: the output declares a halo of {geometry.halo} pixels (the network's "
              "receptive field); discard it on each side of a tile."), "",
             "## Postprocessing (instances)", "",
             (f"Save the `{OUTPUT_ID}` output (from deepImageJ, ilastik, bioimageio.core or "
              "any other tool) and run:"), "",
             "```bash",
             "# with ppp-zoo installed (its core install needs no deep learning framework)",
             "ppp-zoo postprocess OUTPUT --model THIS_MODEL.zip -o labels.tif",
             "```", "",
             ("`OUTPUT` is deepImageJ's TIFF (`<image>_prediction.tif`), ilastik's HDF5 export "
              f"(dataset `exported_data`), or an `.npy`/`.npz` array `{OUTPUT_ID}` of shape "
              f"({n_out}, {', '.join(a.upper() for a in geometry.axes)}). In Fiji, the "
              f"attached macro `{IJ_MACRO}` runs the model on the open image and saves that "
              "TIFF. In Python:"), "",
             "```python",
             "from ppp_zoo.postprocess import assemble, load_model_params",
             "params = load_model_params('THIS_MODEL.zip')",
             f"numinst, features = params.split(output)  # output: ({n_out}, ...), no batch axis",
             "patches = params.patches(numinst, features)  # only where the assembly reads",
             "labels = assemble(numinst, patches, params.assembly)",
             "```", "",
             "Every assembly parameter is stored in `config.patchperpix` of `rdf.yaml` (and in "
             "`patchperpix.json`): "
             + ", ".join(f"`{k}` = {v}" for k, v in ppp["assembly"].items()) + ".", "",
             "## Training data", "",
             (f"{training.get('data') or 'not recorded'}; {training.get('iterations', '?')} "
              "iterations. Median object diameter in the training labels: "
              f"{training.get('object_diameter') or 'unknown'} pixels (rescale images whose "
              "objects differ much in size)."), "",
             "## Metrics", ""]
    if metrics:
        lines += ["| data | " + " | ".join(next(iter(metrics.values()))) + " |",
                  "|---" * (1 + len(next(iter(metrics.values())))) + "|"]
        lines += [f"| {k} | " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                           for v in m.values()) + " |"
                  for k, m in metrics.items()]
    else:
        lines.append("No test-set metrics were recorded for this export.")
    lines += ["", "# Validation", "",
              (f"At export, bioimageio.core's model test ran for every weight format "
               f"({', '.join(formats)}) and passed: " if validated else
               "bioimageio.core's model test was not run at export (run `ppp-zoo validate`); "
               f"it checks for every weight format ({', '.join(formats)}) that ")
              + ("the test input gives the test output "
               f"(relative tolerance {RELATIVE_TOLERANCE}, absolute {ABSOLUTE_TOLERANCE}), and "
               "inference runs at several declared sizes with batch sizes 1 and 2. "
               "`ppp-zoo validate THIS_MODEL.zip --for deepimagej,ilastik,bioimageio` checks "
               "the rules of those tools as well."), "",
              "Largest absolute difference from eager PyTorch on the test input: "
              + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()) + ".", "",
              ("The sample input is the test input: its intensities are clipped at both ends "
               "so that the normalisation percentiles fall on ties and every tool's percentile "
               "definition gives the same normalised image."), "",
              ("Tiled prediction (tiles of `min + n * step`, the halo discarded, the image "
               "mirror-padded at its border) gives the same outputs as the whole image, up to "
               "the normalisation statistics (computed on the whole image when tiling)."), ""]
    return "\n".join(lines)


def _imagej_macro(geometry: Geometry) -> str:
    """An ImageJ macro that runs the package in deepImageJ and saves the raw output where
    ``ppp-zoo postprocess`` reads it."""
    return "\n".join([
        "// Run this PatchPerPix model with deepImageJ on the active image and save its raw",
        "// output; then turn it into instances with:",
        "//   ppp-zoo postprocess <folder>/<image>_prediction.tif --model <this model>.zip",
        "// Set model_path to where deepImageJ installed this model (Fiji's models folder).",
        "model_path = getDirectory(\"imagej\") + \"models\" + File.separator + "
        "\"REPLACE_WITH_MODEL_FOLDER\";",
        "output_folder = getDirectory(\"Choose a folder for the model output\");",
        "input_path = output_folder + getTitle();",
        "if (!endsWith(input_path, \".tif\")) input_path = input_path + \".tif\";",
        "saveAs(\"Tiff\", input_path);",
        "run(\"DeepImageJ Run\", \"model_path=[\" + model_path + \"] input_path=[\" + "
        "input_path + \"] output_folder=[\" + output_folder + \"] display_output=null\");",
        f"print(\"saved the {OUTPUT_ID} output ({geometry.ndim}D) in \" + output_folder);",
        ""])


# --------------------------------------------------------------------------- description
def _patchperpix_info(bundle: ModelBundle, ckpt: dict, metrics: dict | None,
                      hashes: dict) -> dict:
    training = dict(ckpt.get("training") or {})
    if training.get("object_diameter") is None:
        training["object_diameter"] = _object_diameter(bundle)
    source = bundle.config.get("data", {}).get("source", "unknown")
    return patchperpix_info(
        bundle, metrics=metrics, hashes=hashes, version=__version__,
        training={"object_diameter": training.get("object_diameter"),
                  "data": _data_description(bundle.config, source),
                  "iterations": int(ckpt.get("iteration", bundle.iteration))})


def _object_diameter(bundle: ModelBundle) -> float | None:
    with contextlib.suppress(Exception):
        from ..config import config_from_dict
        from ..train import load_training_data, object_diameter

        cfg = config_from_dict(bundle.config)
        return object_diameter(load_training_data(cfg)[0], cfg.data.overlapping)
    return None


def _data_description(config: dict, source: str) -> str:
    data = config.get("data", {})
    text = {"dsb-sample": "the left half of a Data Science Bowl 2018 nuclei crop",
            "synth-nuclei": "synthetic touching nuclei",
            "synth-worms": "synthetic overlapping worms",
            "folder": f"the images and masks in {data.get('path', 'a folder')}"}.get(source, source)
    if source in ("synth-nuclei", "synth-worms"):
        text += f" ({data.get('n_images', '?')} images of {data.get('image_size', '?')})"
    return text


def _describe(name: str, nickname: str, authors: Sequence[str], files: dict, info: dict,
              geometry: Geometry, normalize, formats: Sequence[str], description: str):
    from bioimageio.spec.model import v0_5 as m

    axes_ids = [m.AxisId(a) for a in geometry.axes]
    in_axes = [m.BatchAxis(), m.ChannelAxis(channel_names=[m.Identifier("raw")])] + [
        m.SpaceInputAxis(id=a, size=m.ParameterizedSize(min=geometry.min_size,
                                                        step=geometry.step))
        for a in axes_ids]
    if normalize.mode == "percentile":
        norm = m.ScaleRangeDescr(kwargs=m.ScaleRangeKwargs(
            axes=axes_ids, min_percentile=normalize.p_low, max_percentile=normalize.p_high,
            eps=NORMALIZE_EPS))
    else:
        norm = m.ZeroMeanUnitVarianceDescr(kwargs=m.ZeroMeanUnitVarianceKwargs(
            axes=axes_ids, eps=NORMALIZE_EPS))
    raw = m.InputTensorDescr(
        id=m.TensorId("raw"), axes=in_axes, description="raw grayscale image",
        test_tensor=m.FileDescr(source=files["test_raw"]),
        sample_tensor=m.FileDescr(source=files["sample_raw"]),
        data=m.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[m.EnsureDtypeDescr(kwargs=m.EnsureDtypeKwargs(dtype="float32")), norm])

    lo, hi = info["output"]["channels"]["features"]
    channel_names = [m.Identifier(f"n{i}") for i in range(3)] + [
        m.Identifier(f"f{i}") for i in range(hi - lo)]
    out_axes = [m.BatchAxis(), m.ChannelAxis(channel_names=channel_names)] + [
        m.SpaceOutputAxisWithHalo(id=a, halo=geometry.halo,
                                  size=m.SizeReference(tensor_id=m.TensorId("raw"), axis_id=a))
        for a in axes_ids]
    prediction = m.OutputTensorDescr(
        id=m.TensorId(OUTPUT_ID),
        description=("n0-n2: probabilities of 0, 1, 2+ instances; f*: features for head.npz; "
                     "instances: ppp-zoo postprocess"),
        axes=out_axes, test_tensor=m.FileDescr(source=files[f"test_{OUTPUT_ID}"]),
        data=m.IntervalOrRatioDataDescr(type="float32"))
    weights = {}
    if "torchscript" in formats:
        weights["torchscript"] = m.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=m.Version(torch.__version__.split("+")[0]))
    if "onnx" in formats:
        weights["onnx"] = m.OnnxWeightsDescr(
            source=files["onnx"], opset_version=ONNX_OPSET,
            parent="torchscript" if "torchscript" in formats else None)
    attachments = [m.FileDescr(source=files[k]) for k in
                   ("patchperpix.json", "head.npz", "decoder.npz", IJ_MACRO, "example_image.tif")
                   if k in files]
    source = info["training"]["data"]
    tags = ["instance-segmentation", "patchperpix", f"{geometry.ndim}d", "unet", "pytorch",
            "onnx", "torchscript", "deepimagej", "ilastik"]
    tags += ["nuclei"] if "nuclei" in source else ["worms"] if "worms" in source else []
    tolerance = m.ReproducibilityTolerance(relative_tolerance=RELATIVE_TOLERANCE,
                                           absolute_tolerance=ABSOLUTE_TOLERANCE)
    return m.ModelDescr(
        name=name,
        description=description,
        authors=[m.Author(name=a) for a in authors],
        cite=[m.CiteEntry(text="Hirsch, Mais, Kainmueller: PatchPerPix for Instance "
                               "Segmentation. ECCV 2020", doi=m.Doi(PATCHPERPIX_DOI)),
              m.CiteEntry(text="Mais, Hirsch, Kainmueller: PatchPerPix for Instance "
                               "Segmentation. arXiv:2001.07626",
                          doi=m.Doi(PATCHPERPIX_ARXIV_DOI))],
        license=m.LicenseId("MIT"),
        tags=tags,
        version=m.Version("0.1.0"),
        documentation=m.FileDescr(source=files["README.md"]),
        covers=[m.FileDescr(source=files["cover.png"])],
        attachments=attachments,
        inputs=[raw],
        outputs=[prediction],
        weights=m.WeightsDescr(**weights),
        config=m.Config(bioimageio=m.BioimageioConfig(reproducibility_tolerance=[tolerance],
                                                      nickname=nickname),
                        patchperpix=info),
    )


# --------------------------------------------------------------------------- export
def _load(checkpoint: Path) -> tuple[ModelBundle, dict]:
    bundle = load_checkpoint(checkpoint)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return bundle, {k: ckpt.get(k) for k in ("training", "iteration", "best")}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_files(bundle: ModelBundle, extra: dict, folder: Path, formats: Sequence[str],
                 name: str, metrics: dict | None, progress: Progress,
                 validated: bool = True) -> tuple[dict, dict, dict]:
    from ..postprocess import assemble

    say = progress or (lambda _msg: None)
    net = bundle.model.cpu().eval()
    model = ExportNet(net).eval()
    geometry = package_geometry(bundle.model)
    files: dict[str, Path] = {}

    say("test tensors")
    image, _ = _example_image(bundle, geometry)
    test_raw = _as_raw(_fit(image, (geometry.min_size,) * geometry.ndim))
    test_raw = _with_tied_percentiles(test_raw, bundle.normalize)[None, None]
    net_input, ref_output = _reference_output(model, test_raw, bundle.normalize)
    for key, arr in (("test_raw", test_raw), (f"test_{OUTPUT_ID}", ref_output)):
        files[key] = folder / f"{key}.npy"
        np.save(files[key], np.ascontiguousarray(arr, np.float32), allow_pickle=False)
    # the sample is the test input as an image file: tools that run the sample (deepImageJ's
    # collection check) compare what they get with the test output
    files["sample_raw"] = folder / "sample_raw.tif"
    tifffile.imwrite(files["sample_raw"], test_raw[0, 0], photometric="minisblack")
    example_size = [min(SAMPLE_SIZE[geometry.ndim], max(geometry.min_size,
                                                        s // geometry.step * geometry.step))
                    for s in image.shape]
    example_raw = _as_raw(_fit(image, example_size))
    files["example_image.tif"] = folder / "example_image.tif"
    tifffile.imwrite(files["example_image.tif"], example_raw, photometric="minisblack")

    example = torch.from_numpy(np.ascontiguousarray(net_input))
    diffs = {}
    if "torchscript" in formats:
        say("torchscript")
        files["torchscript"] = save_torchscript(model, example, folder / "weights_torchscript.pt")
    if "onnx" in formats:
        say("onnx")
        files["onnx"] = save_onnx(model, example, folder / "weights.onnx", (OUTPUT_ID,))
    for wf, run in (("torchscript", run_torchscript), ("onnx", run_onnx)):
        if wf in files:  # against the eager output on the same input (the test output)
            diffs[wf] = float(np.abs(run(files[wf], net_input)[0] - ref_output).max())

    files["head.npz"] = folder / "head.npz"
    np.savez(files["head.npz"], **head_arrays(net))
    if net.decoder is not None:
        files["decoder.npz"] = folder / "decoder.npz"
        np.savez(files["decoder.npz"], **decoder_arrays(net))
    hashes = {k: _sha256(files[k]) for k in ("head.npz", "decoder.npz") if k in files}
    info = _patchperpix_info(bundle, extra, metrics, hashes)
    files["patchperpix.json"] = folder / "patchperpix.json"
    files["patchperpix.json"].write_text(json.dumps(info, indent=2), encoding="utf-8")
    files[IJ_MACRO] = folder / IJ_MACRO
    files[IJ_MACRO].write_text(_imagej_macro(geometry), encoding="utf-8")

    say("cover")
    numinst, patches = predict_probabilities(bundle, example_raw)
    labels = assemble(numinst, patches, bundle.assembly)
    files["cover.png"] = folder / "cover.png"
    _write_cover(files["cover.png"], normalize_image(example_raw, bundle.normalize), numinst,
                 labels)
    files["README.md"] = folder / "README.md"
    files["README.md"].write_text(_documentation(name, info, geometry, diffs, formats,
                                                 validated), encoding="utf-8")
    return files, info, diffs


def export_model(checkpoint: str | os.PathLike, output: str | os.PathLike, *,
                 name: str | None = None, nickname: str | None = None,
                 authors: Sequence[str] | None = None,
                 formats: Sequence[str] | str = WEIGHT_FORMATS, folder: bool = False,
                 metrics: dict | None = None, description: str | None = None,
                 validate: bool = True, check_readers: bool = False,
                 progress: Progress = None) -> ExportResult:
    """Export a training checkpoint as a validated bioimage.io model package.

    Parameters
    ----------
    checkpoint : path-like
        ``best.pt`` or ``last.pt`` written by :func:`ppp_zoo.train.train`.
    output : path-like
        The package: a ``.zip`` file, or a folder with ``folder=True``. Replaced if it
        exists, but only once the new package has passed validation.
    name : str or None
        Model name (default: from the variant, dimensions and training data).
    nickname : str or None
        Short id for tools that list models by it (``config.bioimageio.nickname``; deepImageJ
        needs one): lowercase letters, digits, ``-`` and ``_``. Default: from ``name``.
    authors : sequence of str or None
        Author names (default: "ppp-zoo developers").
    formats : sequence of {"torchscript", "onnx"} or str
        Weight formats (a comma-separated string works too).
    folder : bool
        Write an unpacked folder instead of a zip.
    metrics : dict or None
        Measured test metrics to record, e.g. ``{"dsb_test_half": {"ap50": 0.8, ...}}``.
    description : str or None
        One-paragraph description (default: generated).
    validate : bool
        Run bioimageio.core's model test for every weight format before writing (default).
        ``False`` skips it (quick iterations; the result's ``validation`` is empty).
    check_readers : bool
        Also load the package with the bioimage.io readers that ilastik 1.4.1 and 1.4.2
        ship (:data:`ppp_zoo.runtime.readers.READERS`, their environments made on first
        use) and fail if one refuses it. A reader that cannot be installed (offline) is
        recorded as ``"not checked"``.
    progress : callable or None
        Called with the name of each step.

    Returns
    -------
    ExportResult
        Path, size, seconds and the validation table.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing or unreadable checkpoint, an unsupported checkpoint version, bad
        arguments.
    OSError
        The output cannot be written.
    SetupError
        The package failed bioimageio.core's test or a reader refused it (nothing is
        written then).

    Notes
    -----
    The package is written for the readers that the tools ship, not only for the newest
    ``bioimageio.spec``: ``format_version`` 0.5.10 and plain file names for ``covers`` and
    ``documentation`` (:func:`ppp_zoo.runtime.readers.to_reader_forms`). What it was checked
    with is recorded in ``config.ppp_zoo.checked_with``.
    """
    t0 = time.perf_counter()
    formats = _validate_formats(formats)
    output = Path(output)
    _check_output(output, folder)
    if name is not None:
        bad = sorted(set(name) - set(NAME_CHARACTERS))
        if bad or not 5 <= len(name) <= 128:
            raise UserError(f"model name {name!r}: use 5-128 letters, digits and the "
                             f"characters _+- () only (found {''.join(bad) or 'a bad length'})")
    authors = tuple(a.strip() for a in (authors or DEFAULT_AUTHORS) if a and a.strip())
    if not authors:
        raise UserError("give at least one author name")
    bundle, extra = _load(Path(checkpoint))
    net = bundle.model
    source = bundle.config.get("data", {}).get("source", "custom")
    variant_name = "ppp+dec" if net.decoder is not None else "ppp"
    name = name or f"PatchPerPix {variant_name} {net.ndim}D {source}"
    nickname = _check_nickname(nickname or _slug(name))
    description = description or (
        f"PatchPerPix ({variant_name}) instance segmentation, {net.ndim}D, trained on "
        f"{_data_description(bundle.config, source)}. Outputs numinst and "
        "features; instances are assembled by ppp_zoo.postprocess with the parameters in "
        "config.patchperpix.")

    from bioimageio.spec import save_bioimageio_package_as_folder

    parent = output.parent if str(output.parent) else Path(".")
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=parent) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        files, info, diffs = _write_files(bundle, extra, src, formats, name, metrics, progress,
                                          validate)
        descr = _describe(name, nickname, authors, files, info, package_geometry(bundle.model),
                          bundle.normalize, formats, description)
        unpacked = Path(tmp) / "package"
        if progress:
            progress("package")
        save_bioimageio_package_as_folder(descr, output_path=unpacked)
        rdf_path = unpacked / "rdf.yaml"
        write_reader_forms(rdf_path)
        staged = unpacked if folder else _zip_folder(unpacked, Path(tmp) / "package.zip")
        if progress and validate:
            progress("validation")
        rows = tuple(validate_package(staged, formats)) if validate else ()
        failed = [r for r in rows if not r.passed]
        if failed:
            r = failed[0]
            raise SetupError(f"the exported package failed bioimageio.core's test for "
                               f"{r.weight_format} ({r.status}: {r.error}); nothing written")
        checked = _reader_records(staged, rows, check_readers, progress)
        write_reader_forms(rdf_path, checked)
        if not folder:
            staged = _zip_folder(unpacked, staged)
        if folder:
            if output.exists():
                shutil.rmtree(output)
            os.replace(staged, output)
            size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
        else:
            os.replace(staged, output)
            size = output.stat().st_size
    return ExportResult(path=str(output), size_bytes=int(size),
                        seconds=round(time.perf_counter() - t0, 2), variant=net.variant,
                        weight_formats=formats, validation=rows, max_abs_diff=diffs,
                        checked_with=tuple(checked))


def _zip_folder(folder: Path, output: Path) -> Path:
    """A zip of a package folder, rdf.yaml first (replaces ``output``)."""
    names = sorted((p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
                   key=lambda n: (n != "rdf.yaml", n))
    tmp = output.with_name(output.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            zf.write(folder / name, name)
    os.replace(tmp, output)
    return output


def _reader_records(staged: Path, rows: Sequence[ValidationRow], check_readers: bool,
                    progress: Progress) -> list[dict]:
    """What the package was checked with, for ``config.ppp_zoo.checked_with``; raises if a
    reader refuses it."""
    import bioimageio.core
    import bioimageio.spec
    import yaml

    from ..runtime.jdll import jdll_reading
    from ..runtime.readers import READERS, check_with_reader

    records = []
    if rows:
        records.append({"reader": f"bioimageio.spec {bioimageio.spec.__version__} + "
                                  f"bioimageio.core {bioimageio.core.__version__}",
                        "used_by": "ppp-zoo export; the bioimage.io collection",
                        "checks": ["load"] + [f"test_model {r.weight_format}" for r in rows],
                        "result": "passed"})
    rdf_file = staged / "rdf.yaml" if staged.is_dir() else None
    if rdf_file is not None:
        rdf = yaml.safe_load(rdf_file.read_text(encoding="utf-8"))
    else:
        with zipfile.ZipFile(staged) as zf:
            rdf = yaml.safe_load(zf.read("rdf.yaml"))
    problems = [p for group in jdll_reading(rdf) for p in group.problems]
    if problems:
        raise SetupError(f"JDLL (deepImageJ) could not read the exported rdf.yaml: "
                         f"{problems[0]}; nothing written")
    records.append({"reader": "JDLL 0.6 reading rules (ppp_zoo.runtime.jdll)",
                    "used_by": "deepImageJ 3", "checks": ["field forms"], "result": "passed"})
    if check_readers:
        for reader in READERS:
            if progress:
                progress(f"reader {reader.key}")
            result = check_with_reader(staged, reader, progress)
            if result.status == "failed":
                raise SetupError(f"{result.detail}; nothing written")
            records.append(result.to_record())
    return records


def _json_default(value: Any):  # pragma: no cover - used by the CLI for --json
    return str(value)
