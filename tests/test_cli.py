"""The ppp-zoo command line: results on real data, and one clear error line on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from ppp_zoo.cli import app
from ppp_zoo.data.targets import instance_targets

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    res = run("data", "sample", "-o", out)
    assert res.exit_code == 0, res.output
    return out


def test_targets_postprocess_evaluate_on_real_labels(sample_dir, tmp_path):
    """The DSB test half: GT targets -> assembly -> evaluation gives AP@0.9 = 1."""
    npz = tmp_path / "t.npz"
    res = run("targets", sample_dir / "test_labels.tif", "-o", npz, "--patchshape", "25x25")
    assert res.exit_code == 0, res.output
    with np.load(npz) as z:
        assert z["patches"].shape == (625, 512, 256) and z["numinst"].shape == (3, 512, 256)
    pred = tmp_path / "pred.tif"
    res = run("postprocess", npz, "-o", pred, "--partition", "mws", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["n_instances"] == 57
    res = run("evaluate", pred, sample_dir / "test_labels.tif", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["n_gt"] == 57 and d["n_pred"] == 57
    assert d["ap"]["0.9"] >= 0.99 and d["avAP"] >= 0.99
    assert set(d["ap"]) >= {"0.1", "0.5", "0.75", "0.9", "0.95"}
    res = run("evaluate", pred, sample_dir / "test_labels.tif")
    assert res.exit_code == 0 and "AP@0.5" in res.stdout


def test_overlapping_cli_round_trip(tmp_path):
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, 18:22, 4:36] = 1
    masks[1, 4:36, 18:22] = 1
    tifffile.imwrite(tmp_path / "m.tif", masks)
    assert run("targets", tmp_path / "m.tif", "-o", tmp_path / "t.npz", "--patchshape", "11x11",
               "--overlapping").exit_code == 0
    res = run("postprocess", tmp_path / "t.npz", "-o", tmp_path / "p.tif", "--overlapping")
    assert res.exit_code == 0, res.output
    pred = tifffile.imread(tmp_path / "p.tif")
    assert pred.shape == (2, 40, 40)
    res = run("evaluate", tmp_path / "p.tif", tmp_path / "m.tif", "--overlapping", "--json")
    assert json.loads(res.stdout)["ap"]["0.9"] == 1.0


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _good_arrays():
    labels = np.zeros((30, 30), np.int32)
    labels[5:15, 5:15] = 1
    numinst, patches = instance_targets(labels, (5, 5))
    return numinst, patches


@pytest.mark.parametrize("make,msg", [
    (lambda p: _npz(p, numinst=_good_arrays()[0], patchshape=[5, 5]), "no 'patches' array"),
    (lambda p: _npz(p, numinst=_good_arrays()[0], patches=_good_arrays()[1][:20],
                    patchshape=[5, 5]), "channels but patchshape"),
    (lambda p: _npz(p, numinst=_good_arrays()[0][:, :10], patches=_good_arrays()[1],
                    patchshape=[5, 5]), "numinst must have shape"),
    (lambda p: _npz(p, numinst=_good_arrays()[0], patches=_good_arrays()[1] * np.nan,
                    patchshape=[5, 5]), "NaN"),
    (lambda p: _npz(p, numinst=np.stack([np.ones((30, 30)), np.zeros((30, 30)),
                                         np.zeros((30, 30))]),
                    patches=_good_arrays()[1], patchshape=[5, 5]), "no foreground"),
    (lambda p: _npz(p, numinst=_good_arrays()[0], patches=_good_arrays()[1]),
     "pass --patchshape"),
    (lambda p: (p.write_bytes(b"not a zip at all"), p)[1], "cannot read as .npz"),
])
def test_postprocess_bad_input(tmp_path, make, msg):
    src = make(tmp_path / "bad.npz")
    out = tmp_path / "out.tif"
    res = run("postprocess", src, "-o", out)
    assert res.exit_code == 1
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tif*"))  # no temporary leftovers


def test_postprocess_patchshape_mismatch(tmp_path):
    numinst, patches = _good_arrays()
    src = _npz(tmp_path / "a.npz", numinst=numinst, patches=patches, patchshape=[5, 5])
    res = run("postprocess", src, "-o", tmp_path / "o.tif", "--patchshape", "7x7")
    assert res.exit_code == 1 and "does not match" in res.output
    assert not (tmp_path / "o.tif").exists()


def test_missing_and_bad_files(tmp_path):
    res = run("postprocess", tmp_path / "nope.npz", "-o", tmp_path / "o.tif")
    assert res.exit_code == 1 and "no such file" in res.output
    res = run("targets", tmp_path / "nope.tif", "-o", tmp_path / "o.npz")
    assert res.exit_code == 1 and "no such file" in res.output
    (tmp_path / "x.tif").write_bytes(b"garbage")
    res = run("evaluate", tmp_path / "x.tif", tmp_path / "x.tif")
    assert res.exit_code == 1 and res.output.startswith("error:") and "cannot read" in res.output
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((10, 10), np.uint16))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((12, 10), np.uint16))
    res = run("evaluate", tmp_path / "a.tif", tmp_path / "b.tif")
    assert res.exit_code == 1 and "shape" in res.output


def test_unwritable_output(tmp_path):
    numinst, patches = _good_arrays()
    src = _npz(tmp_path / "a.npz", numinst=numinst, patches=patches, patchshape=[5, 5])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run("postprocess", src, "-o", blocker / "sub" / "o.tif")
    assert res.exit_code == 1 and res.output.startswith("error:")


def test_data_synth_commands(tmp_path):
    res = run("data", "synth-nuclei", "-o", tmp_path / "n", "--n-images", 2, "--seed", 3,
              "--size", "96x96")
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "n" / "images").glob("*.tif"))) == 2
    res = run("data", "synth-worms", "-o", tmp_path / "w", "--n-images", 1, "--seed", 3)
    assert res.exit_code == 0, res.output
    masks = tifffile.imread(next((tmp_path / "w" / "masks").glob("*.tif")))
    assert masks.ndim == 3 and masks.shape[0] >= 3


def test_postprocess_blockwise_cli(sample_dir, tmp_path):
    npz = tmp_path / "t.npz"
    assert run("targets", sample_dir / "test_labels.tif", "-o", npz).exit_code == 0
    pred = tmp_path / "pred.tif"
    res = run("postprocess", npz, "-o", pred, "--block", "128x128", "--fast", "--partition",
              "mws", "--json")
    assert res.exit_code == 0, res.output
    res = run("evaluate", pred, sample_dir / "test_labels.tif", "--json")
    assert json.loads(res.stdout)["ap"]["0.9"] >= 0.99
    # overlapping masks block by block: the (N, Y, X) stack of the whole-image assembly
    res = run("postprocess", npz, "-o", tmp_path / "x.npy", "--block", "128x128",
              "--overlapping", "--json")
    assert res.exit_code == 0, res.output
    whole = run("postprocess", npz, "-o", tmp_path / "w.npy", "--overlapping")
    assert whole.exit_code == 0, whole.output
    masks, reference = np.load(tmp_path / "x.npy"), np.load(tmp_path / "w.npy")
    assert masks.ndim == 3 and masks.max() == 1 and len(masks) == len(reference) > 50
    res = run("evaluate", tmp_path / "x.npy", tmp_path / "w.npy", "--overlapping", "--json")
    assert json.loads(res.stdout)["ap"]["0.9"] == 1.0


def test_an_internal_error_is_not_reported_as_a_user_error(sample_dir, tmp_path, monkeypatch):
    """A bug (here a KeyError inside the reader) exits 70 with 'internal error' and the
    traceback in a file; a user's mistake stays one 'error:' line with exit 1."""
    import ppp_zoo.io

    def broken(path):
        raise KeyError("no such key")

    monkeypatch.setattr(ppp_zoo.io, "read_image", broken)
    res = run("evaluate", sample_dir / "labels.tif", sample_dir / "labels.tif")
    assert res.exit_code == 70
    line = res.stderr.strip()
    assert line.startswith("internal error (KeyError: 'no such key')") and "\n" not in line
    saved = line.rsplit(" ", 1)[-1]
    text = open(saved).read()
    assert "Traceback" in text and "KeyError" in text and "broken" in text
    monkeypatch.undo()
    res = run("evaluate", tmp_path / "missing.tif", sample_dir / "labels.tif")
    assert res.exit_code == 1 and res.stderr.startswith("error: ") and "bug" not in res.stderr


@pytest.mark.parametrize("raised, code", [
    (ValueError("operands could not be broadcast together"), 70),  # numpy's: a bug
    (RuntimeError("numba: failed in nopython mode"), 70),
    (NotImplementedError("3D"), 70),
    (None, 1)])  # the project's own UserError: one line
def test_only_the_projects_own_errors_are_the_users(sample_dir, monkeypatch, raised, code):
    import ppp_zoo.io
    from ppp_zoo.errors import UserError

    def reader(path):
        raise raised if raised is not None else UserError(f"{path}: not an image")

    monkeypatch.setattr(ppp_zoo.io, "read_image", reader)
    res = run("evaluate", sample_dir / "labels.tif", sample_dir / "labels.tif")
    assert res.exit_code == code
    first = res.stderr.strip().splitlines()[0]
    assert first.startswith("internal error (" if code == 70 else "error: ")
    assert len(res.stderr.strip().splitlines()) == 1
    traced = run("--traceback", "evaluate", sample_dir / "labels.tif", sample_dir / "labels.tif")
    assert traced.exit_code == code
    assert "Traceback (most recent call last)" in traced.stderr and "in reader" in traced.stderr


def test_a_bug_stops_a_batch_a_bad_image_does_not(sample_dir, tmp_path, monkeypatch):
    """segment over several images: a project error is recorded for its image and the batch
    goes on; a bug (numpy's ValueError inside the assembly) stops it with exit 70."""
    import shutil

    import ppp_zoo.runtime.segment as segment_module

    good = tmp_path / "a.tif"
    shutil.copyfile(sample_dir / "test_image.tif", good)
    bad = tmp_path / "b.tif"
    bad.write_bytes(b"not a tiff")
    res = run("segment", good, bad, "-o", tmp_path / "out")
    assert res.exit_code == 1 and (tmp_path / "out" / "a_labels.tif").is_file()
    assert "b.tif" in res.stderr and "internal error" not in res.stderr

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(segment_module.Segmenter, "_assemble", broken)
    res = run("segment", good, bad, "-o", tmp_path / "out2")
    assert res.exit_code == 70 and "internal error (ValueError: operands" in res.stderr


def test_segment_scale_auto_is_the_default(sample_dir, tmp_path):
    res = run("segment", sample_dir / "test_image.tif", "-o", tmp_path / "auto", "--json",
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(res.stdout.strip().splitlines()[-1])["images"]
    auto = entry["auto_scale"]
    assert auto["confident"] and entry["scale"] in [s for s, _ in auto["passes"]], entry
    assert 0.75 <= entry["scale"] <= 1.25  # the sample is at about the training size
    assert f"scale auto: {entry['scale']:g} (objects about" in res.stderr
    res = run("segment", sample_dir / "test_image.tif", "-o", tmp_path / "half", "--json",
              "--device", "cpu", "--scale", "0.5")
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(res.stdout.strip().splitlines()[-1])["images"]
    assert entry["scale"] == 0.5 and entry["auto_scale"] is None
    assert "scale auto" not in res.output
    labels = tifffile.imread(tmp_path / "half" / "test_image_labels.tif")
    assert labels.shape == (512, 256) and labels.max() >= 20


@pytest.mark.parametrize("args, msg", [
    (["--scale", "abc"], "--scale must be 'auto' or a number"),
    (["--scale", "0"], "--scale must lie in"),
    (["--scale", "nan"], "--scale must lie in"),
    (["--scale", "0.5", "--block", "128x128"], "--scale is not available block by block"),
])
def test_segment_bad_scale_is_one_error_line(sample_dir, tmp_path, args, msg):
    res = run("segment", sample_dir / "test_image.tif", "-o", tmp_path / "o", *args)
    assert res.exit_code == 1
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], res.output
    assert not (tmp_path / "o").exists()


def test_segment_tta_runs_every_orientation(tmp_path):
    """--tta: the network once per mirror and rotation (8 for the square patches of the
    embedded model); not available block by block (one error line)."""
    res = run("segment", "--demo", "--scale", "1", "--tta", "-o", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(res.stdout)["images"]
    plain = run("segment", "--demo", "--scale", "1", "-o", tmp_path / "plain", "--json")
    (reference,) = json.loads(plain.stdout)["images"]
    assert entry["n_tiles"] == 8 * reference["n_tiles"] and entry["n_instances"] > 0
    res = run("segment", tmp_path / "demo_input.tif", "--tta", "--block", "256x256", "-o",
              tmp_path / "b.zarr")
    assert res.exit_code == 1 and "--tta is not available block by block" in res.stderr


def test_postprocess_takes_an_embedded_model_by_name(tmp_path):
    """`postprocess OUTPUTS --model ppp-nuclei2d`: the embedded package by its name gives
    the labels `segment` wrote from the same raw outputs; an unknown name is one line."""
    import tifffile

    res = run("segment", "--demo", "--scale", "1", "--save-outputs", "-o", tmp_path)
    assert res.exit_code == 0, res.output
    outputs = tmp_path / "demo_input_outputs.npz"
    res = run("postprocess", outputs, "--model", "ppp-nuclei2d", "-o", tmp_path / "again.tif")
    assert res.exit_code == 0, res.output
    again = tifffile.imread(tmp_path / "again.tif")
    assert np.array_equal(again, tifffile.imread(tmp_path / "demo_input_labels.tif"))
    assert again.max() > 5
    res = run("postprocess", outputs, "--model", "no-such-model", "-o", tmp_path / "x.tif")
    assert res.exit_code == 1 and "no-such-model: no such model package" in res.stderr
    assert not (tmp_path / "x.tif").exists()
