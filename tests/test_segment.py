"""``ppp-zoo segment`` and ``ppp-zoo models`` through typer's CliRunner.

What is proven: the files a run writes (labels with the right dtype and shape, overlay,
raw outputs, JSON summary); one ``error: <input>: ...`` line per bad input while the other
inputs are still segmented, exit code 1, and no label file for a bad input; a constant
image is not an error; missing/corrupt models and unwritable output folders are one line;
the embedded model is found through the package index.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from ppp_zoo.cli import app
from ppp_zoo.io import write_image
from ppp_zoo.postprocess import AssemblyParams

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from runtime_packages import write_package

runner = CliRunner()


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_checkpoint_2d):
    root = tmp_path_factory.mktemp("cli_pkg")
    ckpt = tiny_checkpoint_2d
    params = AssemblyParams(patchshape=(7, 7), fc_threshold=0.5, numinst_thresholds=(0.4, 0.6))
    return write_package(ckpt, root / "pkg", assembly=params)


@pytest.fixture(scope="module")
def image():
    from ppp_zoo.data.synth import synth_nuclei

    return synth_nuclei((160, 200), n_nuclei=60, seed=3)[0]


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_segment_writes_labels_overlay_outputs_and_summary(package, image, tmp_path):
    src = tmp_path / "in"
    write_image(src / "a.tif", (image * 1000).astype(np.uint16))
    np.save(src / "b.npy", image.astype(np.float32))
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(src), "-o", str(out), "--model", str(package),
                                 "--overlay", "--save-outputs", "--json", "--scale", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [e["input"] for e in summary["images"]] == [str(src / "a.tif"), str(src / "b.npy")]
    assert summary["errors"] == [] and summary["engine"] == "onnx"
    for stem in ("a", "b"):
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.shape == image.shape and labels.dtype == np.uint16
        assert (out / f"{stem}_overlay.png").is_file()
        with np.load(out / f"{stem}_outputs.npz") as npz:
            # one output tensor: numinst probabilities and the 4 features of the tiny U-Net
            assert npz["prediction"].shape == (3 + 4,) + image.shape
    entry = summary["images"][0]
    assert entry["n_instances"] == int(tifffile.imread(out / "a_labels.tif").max()) > 0
    assert {"read", "preprocess", "inference", "assembly", "write"} <= set(entry["timings"])
    assert json.loads((out / "segment_summary.json").read_text()) == summary
    assert "wrote" in result.stderr


def test_glob_and_engine_options(package, image, tmp_path):
    np.save(tmp_path / "x1.npy", image)
    np.save(tmp_path / "x2.npy", image[:100])
    result = runner.invoke(app, ["segment", str(tmp_path / "x*.npy"), "-o", str(tmp_path / "o"),
                                 "--model", str(package), "--engine", "torchscript",
                                 "--device", "cpu", "--tile", "64x64", "--fast"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*_labels.tif")) == \
        ["x1_labels.tif", "x2_labels.tif"]


def test_bad_inputs_one_line_each_others_still_processed(package, image, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "good.npy", image)
    (src / "text.tif").write_text("not an image")
    np.save(src / "empty.npy", np.zeros((0, 5)))
    np.save(src / "nan.npy", np.full((50, 50), np.nan))
    np.save(src / "fourd.npy", np.zeros((2, 2, 50, 50)))
    np.save(src / "channels.npy", np.zeros((5, 50, 50)))
    np.save(src / "small.npy", np.ones((2, 300)))
    bad = ["text.tif", "empty.npy", "nan.npy", "fourd.npy", "channels.npy", "small.npy"]
    out = tmp_path / "out"
    args = ["segment", *[str(src / n) for n in ["good.npy", *bad]], str(src / "missing.png"),
            "-o", str(out), "--model", str(package)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    errors = _errors(result)
    assert len(errors) == len(bad) + 1, result.stderr
    for name in bad:
        assert sum(str(src / name) in e for e in errors) == 1, (name, errors)
    assert any("missing.png: no such file or folder" in e for e in errors)
    assert any("NaN" in e for e in errors) and any("too small" in e for e in errors)
    assert sorted(p.name for p in out.iterdir()) == ["good_labels.tif", "segment_summary.json"]


def test_constant_image_is_not_an_error(package, tmp_path):
    np.save(tmp_path / "flat.npy", np.full((64, 64), 3, np.uint8))
    result = runner.invoke(app, ["segment", str(tmp_path / "flat.npy"), "-o", str(tmp_path / "o"),
                                 "--model", str(package)])
    assert result.exit_code == 0, result.output
    assert "0 instances (constant image)" in result.stderr
    assert tifffile.imread(tmp_path / "o" / "flat_labels.tif").max() == 0


def test_missing_corrupt_model_and_unwritable_output(package, image, tmp_path):
    np.save(tmp_path / "a.npy", image)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 broken")
    (tmp_path / "file").write_text("")
    cases = [(["--model", str(tmp_path / "none.zip")], "no such model package"),
             (["--model", str(tmp_path / "bad.zip")], "not a model package"),
             (["--model", str(package), "-o", str(tmp_path / "file" / "sub")],
              "cannot write into the output folder")]
    for extra, message in cases:
        args = ["segment", str(tmp_path / "a.npy"), *extra]
        if "-o" not in extra:
            args += ["-o", str(tmp_path / "o")]
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (extra, result.output)
        assert len(_errors(result)) == 1 and message in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "a_labels.tif").exists()


@pytest.fixture
def embedded(package, tmp_path, monkeypatch):
    """A model index as shipped in ppp_zoo/models/, pointing at the test package."""
    from ppp_zoo.runtime import models

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(package, folder / "tiny.zip")
    index = {"models": [{"name": "tiny", "file": "tiny.zip", "description": "test model",
                         "metrics": {"synthetic": {"ap50": 0.5, "avAP": 0.25}}}]}
    (folder / "index.json").write_text(json.dumps(index))
    monkeypatch.setattr(models, "_models_dir", lambda: folder)
    return folder


def test_models_lists_embedded_packages_and_segment_uses_the_default(embedded, image, tmp_path):
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "tiny  (default): test model" in result.stdout and "ap50 0.500" in result.stdout
    np.save(tmp_path / "a.npy", image)
    result = runner.invoke(app, ["segment", str(tmp_path / "a.npy"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "a_labels.tif").is_file()
    result = runner.invoke(app, ["segment", str(tmp_path / "a.npy"), "-o", str(tmp_path / "p"),
                                 "--model", "tiny"])
    assert result.exit_code == 0, result.output


def test_no_embedded_model_is_one_error_line(tmp_path, monkeypatch):
    from ppp_zoo.runtime import models

    monkeypatch.setattr(models, "_models_dir", lambda: tmp_path)
    np.save(tmp_path / "a.npy", np.zeros((32, 32)))
    result = runner.invoke(app, ["segment", str(tmp_path / "a.npy"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert _errors(result) == [("error: no embedded model in this installation "
                               "(ppp_zoo/models/index.json is missing): pass --model PACKAGE.zip")]
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 1 and len(_errors(result)) == 1


def test_demo_segments_the_package_sample(package, tmp_path):
    result = runner.invoke(app, ["segment", "--demo", "--model", str(package),
                                 "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(tmp_path / "demo_input_labels.tif")
    # the package's example image: its 64x64 training image
    assert labels.shape == tifffile.imread(tmp_path / "demo_input.tif").shape == (64, 64)
    result = runner.invoke(app, ["segment", "--model", str(package), "-o", str(tmp_path)])
    assert result.exit_code == 1 and "give INPUT images" in result.stderr


def test_folder_input_skips_results_of_an_earlier_run(package, image, tmp_path):
    np.save(tmp_path / "a.npy", image)
    args = ["segment", str(tmp_path), "-o", str(tmp_path), "--model", str(package), "--overlay"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args + ["--json"])
    assert result.exit_code == 0, result.output
    assert [e["input"] for e in json.loads(result.stdout)["images"]] == [str(tmp_path / "a.npy")]
