"""The way back from other tools: their saved outputs -> ``ppp-zoo postprocess --model``.

The model runs once through the runtime (as ``ppp-zoo segment`` runs it); its single output
tensor is then written exactly as deepImageJ (ImageJ hyperstack TIFF, XYCZT) and ilastik
(HDF5 ``exported_data``, channel-last, with vigra ``axistags``) save it, and as ``.npy``.
``postprocess --model`` on each file must give the labels ``segment`` gave.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from ppp_zoo.cli import app
from ppp_zoo.io import channels_first, read_model_output
from ppp_zoo.runtime import open_package, segment_image
from ppp_zoo.runtime.models import embedded_model_path

h5py = pytest.importorskip("h5py")
runner = CliRunner()


def _axistags(keys: str) -> str:
    """vigra's axistags JSON, as ilastik writes it (channel type flag 1, space 2)."""
    return json.dumps({"axes": [{"key": k, "typeFlags": 1 if k == "c" else 2,
                                 "resolution": 0, "description": ""} for k in keys]})


def write_deepimagej_tiff(path, output: np.ndarray) -> None:
    """``output (C, [Z,] Y, X)`` as deepImageJ saves a tensor: an ImageJ hyperstack whose
    channels are the tensor's channels (batch as T, here 1)."""
    axes = "TCYX" if output.ndim == 3 else "TZCYX"
    data = output[None] if output.ndim == 3 else np.moveaxis(output, 0, 1)[None]
    tifffile.imwrite(path, data.astype(np.float32), imagej=True, metadata={"axes": axes})


def write_ilastik_h5(path, output: np.ndarray, tags: bool = True) -> None:
    """``output (C, [Z,] Y, X)`` as ilastik's Data Export writes probabilities:
    channel-last ``[z]yxc`` in dataset ``exported_data``."""
    keys = "yxc" if output.ndim == 3 else "zyxc"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("exported_data", data=np.moveaxis(output, 0, -1))
        if tags:
            ds.attrs["axistags"] = _axistags(keys)


@pytest.fixture(scope="module")
def run2d(dsb_sample):
    """The embedded model on a 200x240 crop of the DSB test half: labels and raw output."""
    image = dsb_sample[0][20:220, 260:500]
    package = embedded_model_path()
    result = segment_image(package, image, keep_outputs=True, device="cpu")
    assert result.n_instances > 10
    return package, result.labels, result.outputs["prediction"]


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    """A tiny exported 3D model on a synthetic volume: package, labels and raw output."""
    pytest.importorskip("torch")
    from runtime_packages import trained_net, write_package

    from ppp_zoo.data.synth import synth_nuclei
    from ppp_zoo.postprocess import AssemblyParams

    root = tmp_path_factory.mktemp("tools3d")
    _, ckpt = trained_net(root / "run", ndim=3, iterations=60)
    params = AssemblyParams(patchshape=(3, 3, 3), patch_threshold=0.5,
                            numinst_thresholds=(0.5, 0.5))
    package = write_package(ckpt, root / "pkg", assembly=params)
    image, _ = synth_nuclei((20, 40, 36), n_nuclei=10, seed=2)
    result = segment_image(package, image, keep_outputs=True)
    assert result.n_instances > 0
    return package, result.labels, result.outputs["prediction"]


def _postprocess(path, package, tmp_path) -> np.ndarray:
    out = tmp_path / f"{path.stem}_labels.tif"
    res = runner.invoke(app, ["postprocess", str(path), "--model", str(package), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return tifffile.imread(out)


@pytest.mark.parametrize("layout", ["deepimagej", "ilastik", "ilastik-untagged", "npy"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_tool_outputs_give_the_labels_of_segment(run2d, run3d, tmp_path, layout, ndim):
    package, expected, output = run2d if ndim == 2 else run3d
    if layout == "deepimagej":
        path = tmp_path / "image_prediction.tif"
        write_deepimagej_tiff(path, output)
    elif layout.startswith("ilastik"):
        path = tmp_path / "image_Probabilities.h5"
        write_ilastik_h5(path, output, tags=layout == "ilastik")
    else:
        path = tmp_path / "prediction.npy"
        np.save(path, output[None])  # with its batch axis
    labels = _postprocess(path, package, tmp_path)
    np.testing.assert_array_equal(labels, expected)


def test_deepimagej_tiff_axes_come_from_its_metadata(run2d, tmp_path):
    """The hyperstack is read by its axes, not by position: a C that is not first is found."""
    _, _, output = run2d
    path = tmp_path / "out.tif"
    write_deepimagej_tiff(path, output)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "CYX"
    got = read_model_output(path, channels=len(output), ndim=2, tensor_id="prediction")
    np.testing.assert_array_equal(got["prediction"], output)


@pytest.mark.parametrize("shape, axes, message", [
    ((2, 19, 30, 40), "tcyx", "axis 't' has 2 entries"),
    ((12, 30, 40), "cyx", "12 channels, but the model outputs 19"),
    ((19, 30, 40), "zyx", "do not fit this 2D model's output"),
    ((30, 40, 5, 7), None, "does not fit this 2D model's output"),
])
def test_mismatched_outputs_are_one_clear_error(shape, axes, message):
    with pytest.raises(ValueError, match=message):
        channels_first(np.zeros(shape, np.float32), axes, channels=19, ndim=2)


def test_cli_rejects_files_of_another_model_or_layout(run2d, tmp_path):
    package, _, output = run2d
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, output[:5].astype(np.float32), imagej=True,
                     metadata={"axes": "CYX"})
    two = tmp_path / "two.h5"
    with h5py.File(two, "w") as f:
        f["a"] = np.zeros((4, 4))
        f["b"] = np.zeros((4, 4))
    other = tmp_path / "out.csv"
    other.write_text("1,2\n")
    for path, message in ((wrong, "5 channels, but the model outputs 19"),
                          (two, "no dataset 'exported_data'"),
                          (other, "model outputs are read from")):
        res = runner.invoke(app, ["postprocess", str(path), "--model", str(package),
                                  "-o", str(tmp_path / "l.tif")])
        text = res.stderr.strip()
        assert res.exit_code == 1 and text.startswith("error: ") and "\n" not in text
        assert message in text and str(path) in text
        assert not (tmp_path / "l.tif").exists()


def test_format1_packages_still_segment_and_postprocess(dsb_sample, tmp_path):
    """A package of the earlier two-output layout (the first embedded model, kept as a
    fixture) runs through segment, and its saved outputs through postprocess --model."""
    from pathlib import Path

    legacy = Path(__file__).parent / "data" / "ppp-nuclei2d-format1.zip"
    pkg = open_package(legacy)
    assert pkg.output_ids == ("numinst", "patches") and pkg.model_params.format == 1
    image = dsb_sample[0][20:220, 260:500]
    result = segment_image(legacy, image, keep_outputs=True, device="cpu")
    assert result.n_instances > 10
    npz = tmp_path / "legacy_outputs.npz"
    np.savez(npz, **result.outputs)
    np.testing.assert_array_equal(_postprocess(npz, legacy, tmp_path), result.labels)
    # the same network re-exported in the current layout (kept beside it) gives the same
    # instances
    current = segment_image(legacy.with_name("ppp-nuclei2d-format2.zip"), image, device="cpu")
    assert current.n_instances == result.n_instances
    np.testing.assert_array_equal(current.labels, result.labels)


def test_postprocess_exact_overrides_a_fast_mode_package(run2d, tmp_path):
    """The default model assembles in fast mode; --exact makes every voting pixel a centre."""
    package, expected, output = run2d
    path = tmp_path / "prediction.npy"
    np.save(path, output)
    summaries = {}
    for mode in ("--fast", "--exact"):
        res = runner.invoke(app, ["postprocess", str(path), "--model", str(package), mode,
                                  "--json", "-o", str(tmp_path / f"l{mode}.tif")])
        assert res.exit_code == 0, res.output
        summaries[mode] = json.loads(res.stdout)
    assert summaries["--exact"]["n_candidates"] > 3 * summaries["--fast"]["n_candidates"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l--fast.tif"), expected)
