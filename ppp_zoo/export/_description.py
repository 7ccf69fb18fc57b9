"""What a package says about itself, written by :func:`ppp_zoo.export.export_model`: the
bioimage.io description (``rdf.yaml``: tensors, preprocessing, weights, citations,
``config.patchperpix``), the documentation (``README.md``) and the ImageJ macro that runs
the model in deepImageJ.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch

from .. import __version__
from ..predict import NORMALIZE_EPS, OUTPUT_ID, Checkpoint, Geometry, patchperpix_info
from .wrapper import ONNX_OPSET

PATCHPERPIX_DOI = "10.1007/978-3-030-58595-2_18"
PATCHPERPIX_ARXIV_DOI = "10.48550/arXiv.2001.07626"
#: tolerances stored in the package for bioimageio.core's reproducibility check
RELATIVE_TOLERANCE = 1e-3
ABSOLUTE_TOLERANCE = 1e-4
IJ_MACRO = "deepimagej_run.ijm"


# --------------------------------------------------------------------------- documentation
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
              "iterations. Median object "
              f"{'width' if training.get('object_size') == 'width' else 'diameter'} in the "
              f"training labels: {training.get('object_diameter') or 'unknown'} pixels "
              "(rescale images whose objects differ much in size)."), "",
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
def _patchperpix_info(bundle: Checkpoint, ckpt: dict, metrics: dict | None,
                      hashes: dict) -> dict:
    training = dict(ckpt.get("training") or {})
    overlapping = bool(bundle.config.get("data", {}).get("overlapping"))
    if "object_size" not in training:  # older checkpoints measured the equivalent diameter
        training["object_size"] = "width" if overlapping else "diameter"
        if overlapping:  # measure again, as training now does
            training["object_diameter"] = None
    if training.get("object_diameter") is None:
        training["object_diameter"] = _object_diameter(bundle)
    source = bundle.config.get("data", {}).get("source", "unknown")
    return patchperpix_info(
        bundle, metrics=metrics, hashes=hashes, version=__version__,
        training={"object_diameter": training.get("object_diameter"),
                  "object_size": training["object_size"],
                  "data": _data_description(bundle.config, source),
                  "iterations": int(ckpt.get("iteration", bundle.iteration))})


def _object_diameter(bundle: Checkpoint) -> float | None:
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
