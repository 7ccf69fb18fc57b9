"""The consumer runtime: packages, preprocessing, engines and tiled inference.

The model packages here are tiny networks trained for a few hundred steps on synthetic
nuclei (seconds) and written to the package contract by ``runtime_packages.py``.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import yaml
from scipy import ndimage

from ppp_zoo.postprocess import AssemblyParams
from ppp_zoo.runtime import (
    PackageError,
    open_package,
    preprocess,
    run_tiled,
    segment_image,
)
from ppp_zoo.runtime.segment import InputError, as_model_input
from ppp_zoo.runtime.tiling import axis_tiles, tile_size, valid_size

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from runtime_packages import trained_net, write_package

ASSEMBLY_2D = AssemblyParams(patchshape=(7, 7), fc_threshold=0.5, numinst_thresholds=(0.4, 0.6))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def tiny2d(tmp_path_factory, tiny_checkpoint_2d):
    """A 2D ``ppp`` package (7x7 patches, depth-2 U-Net) as a zip, and its checkpoint."""
    root = tmp_path_factory.mktemp("tiny2d")
    ckpt = tiny_checkpoint_2d
    return write_package(ckpt, root / "pkg", assembly=ASSEMBLY_2D, object_diameter=14.0), ckpt


@pytest.fixture(scope="session")
def synth512():
    from ppp_zoo.data.synth import synth_nuclei

    return synth_nuclei((512, 512), n_nuclei=400, seed=5)


# --------------------------------------------------------------------------- preprocessing
PREPROCESSING_CASES = [
    [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
     {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0,
                                      "max_percentile": 99.8, "eps": 1e-6}}],
    [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
     {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"], "eps": 1e-6}}],
    [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 5.0,
                                      "max_percentile": 95.0}},
     {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}],
    [{"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": -3.0}},
     {"id": "binarize", "kwargs": {"threshold": 2000.0}}],
    [{"id": "scale_linear", "kwargs": {"axis": "channel", "gain": [0.5, 2.0],
                                       "offset": [1.0, -1.0]}}],
    [{"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": 1000.0, "std": 500.0}}],
    [{"id": "clip", "kwargs": {"axes": ["y", "x"], "min_percentile": 2.0,
                               "max_percentile": 98.0}}],
]


@pytest.mark.parametrize("ops", PREPROCESSING_CASES, ids=lambda ops: "+".join(o["id"] for o in ops))
def test_preprocessing_equals_bioimageio_core(ops):
    """Each op computes what bioimageio.core's implementation computes (per sample)."""
    pytest.importorskip("bioimageio.core")
    import pydantic
    from bioimageio.core import Sample, Tensor, proc_ops
    from bioimageio.core.stat_calculators import compute_sample_measures
    from bioimageio.spec.model import v0_5

    classes = {"ensure_dtype": proc_ops.EnsureDtype, "scale_range": proc_ops.ScaleRange,
               "zero_mean_unit_variance": proc_ops.ZeroMeanUnitVariance,
               "clip": proc_ops.Clip, "scale_linear": proc_ops.ScaleLinear,
               "binarize": proc_ops.Binarize,
               "fixed_zero_mean_unit_variance": proc_ops.FixedZeroMeanUnitVariance}
    dims = ("batch", "channel", "y", "x")
    x = np.random.default_rng(3).gamma(2.0, 600.0, (1, 2, 37, 53)).astype(np.uint16)
    sample = Sample(members={"raw": Tensor(x, dims=dims)}, stat={}, id=0)
    adapter = pydantic.TypeAdapter(v0_5.PreprocessingDescr)
    for op in ops:
        proc = classes[op["id"]].from_proc_descr(adapter.validate_python(op), "raw")
        sample.stat.update(compute_sample_measures(list(proc.required_measures), sample))
        proc(sample)
    expected = sample.members["raw"].data.values
    ours = preprocess(x, dims, ops, dtype="float64")
    np.testing.assert_allclose(ours, expected.astype(np.float64), rtol=1e-6, atol=1e-6)


def test_preprocess_rejects_unknown_and_dataset_ops():
    x = np.zeros((1, 1, 8, 8))
    with pytest.raises(ValueError, match="unsupported preprocessing operation 'denoise'"):
        preprocess(x, ("batch", "channel", "y", "x"), [{"id": "denoise", "kwargs": {}}])
    with pytest.raises(ValueError, match="dataset statistics"):
        preprocess(x, ("batch", "channel", "y", "x"),
                   [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["batch", "y", "x"]}}])


# --------------------------------------------------------------------------- tiling logic
def _pooling_engine(radius: int, pool: int):
    """A fake network: mean over a (2r+1) window of the input averaged on a ``pool`` grid.

    Its output at a pixel depends on the input within ``radius + pool`` pixels and on the
    position of the pooling grid, like a U-Net's; it is exact in float64.
    """
    def run(t: np.ndarray) -> list[np.ndarray]:
        x = t[0, 0].astype(np.float64)
        assert all(s % pool == 0 for s in x.shape), x.shape
        blocks = x.reshape(sum(((s // pool, pool) for s in x.shape), ()))
        coarse = blocks.mean(axis=tuple(range(1, 2 * x.ndim, 2)))
        for ax in range(x.ndim):
            coarse = np.repeat(coarse, pool, axis=ax)
        out = ndimage.uniform_filter(coarse, size=2 * radius + 1, mode="constant")
        return [out[None, None], np.stack([out, x])[None]]
    return run


@pytest.mark.parametrize("shape, tile", [
    ((50, 70), (16, 24)), ((512, 512), (64, 96)), ((7, 130), (16, 32)), ((3, 5), (16, 16)),
    ((20, 30, 41), (16, 16, 24)), ((5, 9, 9), (8, 8, 8)),
])
def test_tiled_equals_untiled_with_known_receptive_field(shape, tile):
    """Tiles with a halo >= the receptive field give exactly the untiled result, for
    inputs larger and smaller than one tile, 2D and 3D."""
    engine = _pooling_engine(radius=3, pool=4)
    nd = len(shape)
    # integer values: every partial sum is exact, so the positions of the sums do not matter
    x = np.random.default_rng(0).integers(0, 256, (1, 1) + shape).astype(np.float32)
    kw = {"min_shape": (8,) * nd, "step": (4,) * nd, "halo": (8,) * nd}
    whole = run_tiled(engine, x, tile=(4096,) * nd, **kw)
    calls = []
    tiled = run_tiled(engine, x, tile=tile, progress=lambda d, t: calls.append((d, t)), **kw)
    for a, b in zip(whole, tiled):
        assert a.shape == b.shape == (a.shape[0],) + shape
        np.testing.assert_array_equal(a, b)
    assert calls[-1][0] == calls[-1][1] >= 1


def test_too_small_halo_shows_in_the_result():
    """Control: with a halo below the receptive field, tiled and untiled differ."""
    engine = _pooling_engine(radius=6, pool=4)
    x = np.random.default_rng(0).random((1, 1, 64, 64)).astype(np.float32)
    kw = {"min_shape": (8, 8), "step": (4, 4), "halo": (2, 2)}
    whole = run_tiled(engine, x, tile=(64, 64), **kw)[0]
    tiled = run_tiled(engine, x, tile=(16, 16), **kw)[0]
    assert not np.allclose(whole, tiled)


@pytest.mark.parametrize("padded, tile, halo, step", [(100, 40, 5, 10), (512, 96, 16, 8),
                                                      (37, 37, 4, 1), (300, 64, 20, 4)])
def test_axis_tiles_cover_once_and_keep_the_halo(padded, tile, halo, step):
    tiles = axis_tiles(padded, tile, halo, step)
    assert tiles[0][1] == 0 and tiles[-1][2] == padded
    for (s, lo, hi), nxt in zip(tiles, tiles[1:] + [None]):
        assert s % step == 0 and 0 <= s and s + tile <= padded
        assert lo < hi
        if nxt is not None:
            assert nxt[1] == hi and hi <= s + tile - halo
        if lo > 0:
            assert lo >= s + halo


def test_sizes_round_to_min_plus_steps():
    assert valid_size(1, 16, 8) == 16 and valid_size(17, 16, 8) == 24
    assert tile_size(100, 16, 8, 4, 1000) == 96
    assert tile_size(8, 16, 8, 12, 1000) == 32  # core of one step after the halo
    assert tile_size(512, 16, 8, 4, 40) == 40  # never larger than the padded input


# --------------------------------------------------------------------------- packages
def test_package_reads_contract_fields(tiny2d, tmp_path):
    from ppp_zoo.predict import load_checkpoint

    path, ckpt = tiny2d
    net = load_checkpoint(ckpt).model
    pkg = open_package(path)
    assert pkg.space_axes == ("y", "x") and pkg.n_channels == 1
    assert pkg.step == (net.size_divisor,) * 2 and pkg.halo == (net.halo,) * 2
    assert pkg.min_shape[0] > 2 * net.halo and pkg.min_shape[0] % net.size_divisor == 0
    assert pkg.output_ids == ("prediction",) and pkg.variant == "ppp"
    assert pkg.n_output_channels == 3 + net.unet.out_channels
    assert set(pkg.weights) == {"onnx", "torchscript"}
    assert pkg.assembly_params() == ASSEMBLY_2D
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "unpacked")
    assert open_package(tmp_path / "unpacked").config == pkg.config


def _broken_packages(tmp_path, good_zip):
    with zipfile.ZipFile(good_zip) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    rdf = yaml.safe_load(members["rdf.yaml"])

    def zipped(name, files):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as zf:
            for n, data in files.items():
                zf.writestr(n, data)
        return path

    (tmp_path / "text.zip").write_text("not a zip")
    no_cfg = dict(rdf, config={})
    two_inputs = dict(rdf, inputs=rdf["inputs"] * 2)
    return {
        "missing": (tmp_path / "nope.zip", "no such model package"),
        "not a zip": (tmp_path / "text.zip", "not a model package"),
        "no rdf": (zipped("nordf.zip", {"weights.onnx": members["weights.onnx"]}),
                   "no rdf.yaml"),
        "bad yaml": (zipped("badyaml.zip", {"rdf.yaml": b"inputs: [\n"}),
                     "not a readable model package"),
        "no config": (zipped("nocfg.zip", {"rdf.yaml": yaml.safe_dump(no_cfg)}),
                      "no config.patchperpix"),
        "two inputs": (zipped("two.zip", {"rdf.yaml": yaml.safe_dump(two_inputs)}),
                       "exactly one input"),
    }


def test_corrupt_packages_give_one_line_errors(tiny2d, tmp_path):
    path, _ = tiny2d
    for case, (bad, message) in _broken_packages(tmp_path, path).items():
        with pytest.raises(PackageError, match=message) as err:
            open_package(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value), case


def test_missing_weights_file_is_reported(tiny2d, tmp_path):
    path, _ = tiny2d
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(tmp_path / "w.zip", "w") as out:
        for n in zf.namelist():
            if n != "weights.onnx":
                out.writestr(n, zf.read(n))
    with pytest.raises(PackageError, match="lacks the file 'weights.onnx'"):
        segment_image(tmp_path / "w.zip", np.zeros((64, 64)))


# --------------------------------------------------------------------------- real models
def test_tiled_equals_untiled_on_512(tiny2d, synth512):
    """Small tiles (96x96, 64 network runs) give the labels of one untiled run."""
    path, _ = tiny2d
    image, _ = synth512
    whole = segment_image(path, image, tile=(1024, 1024), keep_outputs=True)
    tiled = segment_image(path, image, tile=(96, 96), keep_outputs=True)
    assert whole.n_tiles == 1 and tiled.n_tiles > 25
    for key in whole.outputs:
        np.testing.assert_allclose(tiled.outputs[key], whole.outputs[key], atol=1e-5)
    assert whole.n_instances > 50
    np.testing.assert_array_equal(tiled.labels, whole.labels)


def test_onnx_and_torchscript_give_the_same_labels(tiny2d, synth512):
    path, _ = tiny2d
    image = synth512[0][:256, :256]
    onnx = segment_image(path, image, engine="onnx", device="cpu", keep_outputs=True)
    ts = segment_image(path, image, engine="torchscript", device="cpu", keep_outputs=True)
    for key in onnx.outputs:
        np.testing.assert_allclose(onnx.outputs[key], ts.outputs[key], atol=1e-5)
    assert onnx.n_instances > 10
    np.testing.assert_array_equal(onnx.labels, ts.labels)


def test_3d_package(tmp_path):
    """A 3D package segments a 3D image of any size into several instances; tiled equals
    untiled, outputs and instances."""
    from ppp_zoo.data.synth import synth_nuclei

    _, ckpt = trained_net(tmp_path / "run3d", ndim=3, iterations=200)
    params = AssemblyParams(patchshape=(3, 3, 3), patch_threshold=0.7,
                            numinst_thresholds=(0.5, 0.5))
    path = write_package(ckpt, tmp_path / "pkg3d", assembly=params, zip_it=False)
    image, _ = synth_nuclei((21, 45, 38), n_nuclei=10, seed=2)
    whole = segment_image(path, image, tile=(64, 64, 64), keep_outputs=True)
    tiled = segment_image(path, image, tile=(28, 28, 28), keep_outputs=True)
    assert whole.labels.shape == image.shape and tiled.n_tiles > 1
    assert whole.labels.max() >= 4  # the tiny net separates several of the 10 nuclei
    np.testing.assert_allclose(tiled.outputs["prediction"], whole.outputs["prediction"],
                               atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    with pytest.raises(InputError, match="this 3D model takes"):
        segment_image(path, image[0])


def test_scale_returns_labels_on_the_input_grid(tiny2d, synth512):
    path, _ = tiny2d
    image = synth512[0][:200, :300]
    small = segment_image(path, image, scale=0.5)
    assert small.labels.shape == image.shape and small.scale == 0.5
    ids = np.unique(small.labels)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    with pytest.raises(InputError, match="too small"):
        segment_image(path, image, scale=0.01)


def test_scale_hint_from_the_training_object_size(tiny2d, synth512):
    """Objects far smaller than the recorded training size give a --scale suggestion."""
    import dataclasses

    pkg = open_package(tiny2d[0])
    big = dataclasses.replace(pkg, config=dict(pkg.config, training={"object_diameter": 60.0}))
    result = segment_image(big, synth512[0][:256, :256])
    assert result.n_instances >= 5
    assert result.suggested_scale is not None and result.suggested_scale > 1.5
    assert any(f"--scale {result.suggested_scale}" in n for n in result.notes)
    plain = segment_image(pkg, synth512[0][:256, :256])
    assert plain.labels.shape == result.labels.shape


def test_constant_image_gives_no_instances(tiny2d):
    path, _ = tiny2d
    result = segment_image(path, np.full((80, 90), 7, np.uint16))
    assert result.n_instances == 0 and result.labels.shape == (80, 90)
    assert "constant image: no instances" in result.notes


# --------------------------------------------------------------------------- scale="auto"
@pytest.fixture(scope="module")
def nuclei2d():
    """The embedded default model, loaded once."""
    from ppp_zoo.runtime import load_segmenter
    from ppp_zoo.runtime.models import resolve_model

    with load_segmenter(resolve_model(None)) as segmenter:
        yield segmenter


def dsb_test_half_resampled(dsb_sample, factor):
    """The DSB test half (which the embedded model never saw) with objects ``factor`` times
    their size: the image linearly, the labels by nearest neighbour."""
    from skimage.transform import rescale

    from ppp_zoo.data import dsb_split

    image, labels = dsb_split(*dsb_sample)["test"]
    return (rescale(image.astype(np.float32), factor, order=1, preserve_range=True,
                    anti_aliasing=factor < 1),
            rescale(labels, factor, order=0, preserve_range=True,
                    anti_aliasing=False).astype(np.int32))


def test_auto_scale_finds_objects_twice_the_training_size(nuclei2d, dsb_sample):
    """Objects twice as large as in the DSB sample: auto chooses about 1/2, is confident and
    segments as well as the true factor."""
    import json

    from ppp_zoo.evaluate import evaluate_image

    image, labels = dsb_test_half_resampled(dsb_sample, 2.0)
    auto = nuclei2d.segment(image, scale="auto")
    assert auto.labels.shape == labels.shape
    # the 1/4 probe measures these objects (12 px there) a little too large (a first
    # estimate of 0.45 would round to 0.42); the 1/2 probe refines it to the true factor
    assert auto.scale == 0.5 and auto.auto_scale["confident"], auto.auto_scale
    info = auto.auto_scale
    assert info["trained_diameter"] == nuclei2d.package.object_diameter
    assert [s for s, _ in info["passes"]] == [0.25, 0.5], info
    assert not any(n.startswith("scale auto") for n in auto.notes)
    summary = auto.summary()
    assert summary["auto_scale"] == info and summary["scale"] == auto.scale
    json.dumps(summary)
    true = nuclei2d.segment(image, scale=0.5)
    assert true.auto_scale is None
    ap_auto = evaluate_image(auto.labels, labels).ap["0.5"]
    ap_true = evaluate_image(true.labels, labels).ap["0.5"]
    assert ap_auto >= ap_true - 0.05 and ap_auto >= 0.75, (ap_auto, ap_true)


def test_auto_scale_finds_objects_half_the_training_size(nuclei2d, dsb_sample):
    image, _ = dsb_test_half_resampled(dsb_sample, 0.5)
    result = nuclei2d.segment(image, scale="auto")
    assert 1.6 <= result.scale <= 2.4 and result.auto_scale["confident"], result.auto_scale
    assert result.labels.shape == image.shape and result.n_instances >= 20


def test_auto_scale_constant_and_objectless_images(nuclei2d):
    constant = nuclei2d.segment(np.full((100, 120), 7, np.uint16), scale="auto")
    assert constant.scale == 1.0 and constant.constant_image and constant.n_tiles == 0
    assert not (constant.auto_scale or {}).get("passes")
    noise = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    result = nuclei2d.segment(noise, scale="auto")
    # noise may pass for small objects at a coarse probe: the result must then say that it
    # is not sure
    assert not result.auto_scale["confident"]
    notes = [n for n in result.notes if n.startswith("scale auto:")]
    assert len(notes) == 1, result.notes
    if result.auto_scale["diameter"] is not None:  # fragments were found and measured
        assert "too few" not in notes[0] and "px across" in notes[0], notes


@pytest.mark.parametrize("scale", ["big", "Auto", 0, -1.0, float("nan"), float("inf")])
def test_bad_scale_is_an_input_error(nuclei2d, scale):
    with pytest.raises(InputError, match="scale must be a positive number or 'auto'"):
        nuclei2d.segment(np.random.default_rng(0).random((64, 64)), scale=scale)


@pytest.mark.parametrize("image, message", [
    (np.zeros((0, 10)), "empty image"),
    (np.full((40, 40), np.nan), "NaN"),
    (np.zeros((2, 3, 40, 40)), "has 4 dimensions"),
    (np.zeros((5, 40, 40)), "no channel axis of size 1"),
    (np.zeros((2, 300)), "too small"),
    (np.array([["a"]]), "numeric"),
])
def test_bad_images(tiny2d, image, message):
    pkg = open_package(tiny2d[0])
    with pytest.raises(InputError, match=message):
        as_model_input(image, pkg)


def test_channel_handling(tiny2d):
    pkg = open_package(tiny2d[0])
    rgb = np.random.default_rng(0).random((30, 40, 3))
    assert as_model_input(rgb, pkg).shape == (1, 30, 40)
    assert as_model_input(rgb[..., :1], pkg).shape == (1, 30, 40)
    assert as_model_input(rgb[None, ..., 0], pkg).shape == (1, 30, 40)


def test_consumer_runtime_imports_neither_torch_nor_bioimageio(tiny2d):
    path, _ = tiny2d
    code = (
        "import sys, numpy as np\n"
        "from ppp_zoo.runtime import segment_image\n"
        "import ppp_zoo.cli\n"
        f"r = segment_image({str(path)!r}, np.random.default_rng(0).random((64, 64)))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'bioimageio')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- exported packages
@pytest.fixture(scope="session")
def exported(tiny2d, tmp_path_factory):
    """Packages written by ``ppp_zoo.export`` for a ``ppp`` and a ``ppp+dec`` checkpoint."""
    export = pytest.importorskip("ppp_zoo.export")
    pytest.importorskip("bioimageio.core")
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("exported")
    _, dec_ckpt = trained_net(root / "dec", ndim=2, variant="ppp+dec", iterations=30)
    return {"ppp": export.export_model(tiny2d[1], root / "ppp.zip").path,
            "ppp+dec": export.export_model(dec_ckpt, root / "dec.zip").path}


@pytest.mark.parametrize("variant", ["ppp", "ppp+dec"])
@pytest.mark.parametrize("engine", ["onnx", "torchscript"])
def test_runtime_reproduces_the_exported_test_tensors(exported, variant, engine):
    """Preprocessing + engine + tiling of the runtime give the outputs the exporter recorded
    (and bioimageio.core checked) for the package's test input."""
    import io

    from ppp_zoo.runtime import create_engine

    pkg = open_package(exported[variant])
    raw = np.load(io.BytesIO(pkg.read_bytes(pkg.rdf["inputs"][0]["test_tensor"]["source"])))
    expected = [np.load(io.BytesIO(pkg.read_bytes(o["test_tensor"]["source"])))[0]
                for o in pkg.rdf["outputs"]]
    x = preprocess(raw, ("batch", "channel") + pkg.space_axes, pkg.preprocessing)
    with create_engine(pkg, engine, "cpu") as eng:
        outputs = run_tiled(eng, x, min_shape=pkg.min_shape, step=pkg.step, halo=pkg.halo)
    for out, exp in zip(outputs, expected):
        np.testing.assert_allclose(out, exp, atol=1e-5)


def test_exported_packages_segment(exported, synth512):
    """Both variants segment tiled and untiled alike; ppp+dec also blockwise."""
    image = synth512[0][:160, :200]
    for variant, path in exported.items():
        whole = segment_image(path, image, tile=(512, 512))
        tiled = segment_image(path, image, tile=(48, 48))
        assert tiled.n_tiles > 1
        np.testing.assert_array_equal(tiled.labels, whole.labels, err_msg=variant)
    blocks = segment_image(exported["ppp+dec"], image, block=(64, 64))
    assert blocks.labels.shape == image.shape and blocks.labels.dtype == np.int32


def test_overlapping_model_gives_a_mask_stack(tiny2d, synth512):
    """A package assembling overlapping instances returns (N, Y, X) masks, also rescaled."""
    import dataclasses

    pkg = open_package(tiny2d[0])
    cfg = dict(pkg.config, assembly=dict(pkg.config["assembly"], overlapping=True))
    overlapping = dataclasses.replace(pkg, config=cfg)
    image = synth512[0][:128, :160]
    for scale in (1.0, 0.75):
        result = segment_image(overlapping, image, scale=scale)
        assert result.labels.dtype == bool and result.labels.shape[1:] == image.shape
        assert result.n_instances == result.labels.shape[0] > 0
    # the blockwise path of segment (blocks larger than two patches): the same masks
    from ppp_zoo.evaluate import evaluate_image

    whole = segment_image(overlapping, image).labels
    blocks = segment_image(overlapping, image, block=(48, 64)).labels
    assert blocks.dtype == bool and len(blocks) == len(whole)
    assert evaluate_image(blocks, whole, overlapping=True).ap["0.9"] == 1.0


# --------------------------------------------------------------------------- untrusted packages
def _rezip(src, dst, replace: dict | None = None, extra: dict | None = None):
    """Copy a package zip, replacing member contents (bytes) and adding members."""
    with zipfile.ZipFile(src) as zf, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for n in zf.namelist():
            out.writestr(n, (replace or {}).get(n, zf.read(n)))
        for n, data in (extra or {}).items():
            out.writestr(n, data)
    return dst


def test_zip_bomb_is_refused_before_inflating(tiny2d, tmp_path):
    """A weights member of 64 MiB zeros (64 KiB in the zip) is refused from its header."""
    import resource

    path, _ = tiny2d
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for n in zf.namelist():
            if n != "weights.onnx":
                out.writestr(n, zf.read(n))
        with out.open("weights.onnx", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PackageError, match="would inflate to 67108864 bytes") as err:
        segment_image(bomb, np.zeros((64, 64)))
    assert str(bomb) in str(err.value) and "\n" not in str(err.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10  # KiB


def test_members_over_the_size_limit_are_refused(tiny2d, monkeypatch):
    from ppp_zoo.postprocess import model_package

    path, _ = tiny2d
    monkeypatch.setattr(model_package, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(PackageError, match=r"weights.onnx would inflate to \d+ bytes"):
        open_package(path).read_bytes("weights.onnx")


def test_tampered_files_and_wrong_checksums_are_refused(tiny2d, tmp_path):
    path, _ = tiny2d
    with zipfile.ZipFile(path) as zf:
        onnx = bytearray(zf.read("weights.onnx"))
        head = bytearray(zf.read("head.npz"))
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    onnx[len(onnx) // 2] ^= 0xFF
    tampered = _rezip(path, tmp_path / "tampered.zip", {"weights.onnx": bytes(onnx)})
    rdf["weights"]["onnx"]["sha256"] = "0" * 64
    wrong_hash = _rezip(path, tmp_path / "wronghash.zip",
                        {"rdf.yaml": yaml.safe_dump(rdf).encode()})
    for bad in (tampered, wrong_hash):
        with pytest.raises(PackageError, match="weights.onnx does not match its declared "
                                               "SHA-256") as err:
            segment_image(bad, np.zeros((64, 64)))
        assert str(bad) in str(err.value)
    # the postprocessing's own reader checks the head against patchperpix.json
    head[-40] ^= 0xFF
    bad_head = _rezip(path, tmp_path / "badhead.zip", {"head.npz": bytes(head)})
    from ppp_zoo.postprocess import load_model_params

    with pytest.raises(PackageError, match="head.npz does not match its declared SHA-256"):
        load_model_params(bad_head)


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "a/../../b.onnx"])
def test_names_outside_the_package_are_refused(tiny2d, tmp_path, name):
    path, _ = tiny2d
    with zipfile.ZipFile(path) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
    rdf["weights"]["onnx"]["source"] = name
    bad = _rezip(path, tmp_path / "outside.zip", {"rdf.yaml": yaml.safe_dump(rdf).encode()})
    with pytest.raises(PackageError, match="points outside the package"):
        segment_image(bad, np.zeros((64, 64)))
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "folder")
    (tmp_path / "folder" / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(PackageError, match="points outside the package"):
        segment_image(tmp_path / "folder", np.zeros((64, 64)))


@pytest.mark.parametrize("block", [None, (64, 64)])
def test_stage_progress_names_each_stage_and_can_stop_the_assembly(tiny2d, synth512, block):
    """A GUI cancels during the assembly by raising from ``stage_progress``."""
    image = synth512[0][:128, :128]
    seen: list[str] = []
    segment_image(tiny2d[0], image, stage_progress=seen.append, block=block)
    assert seen[:2] == ["inference", "decode"]
    steps = [s for s in seen if s.startswith("assembly: ")]
    assert steps and (all("block" in s for s in steps) if block else
                      "assembly: consensus" in steps or len(steps) >= 3)

    class Stop(Exception):
        pass

    def stop_in_assembly(name: str) -> None:
        if name.startswith("assembly: "):
            raise Stop(name)

    with pytest.raises(Stop, match="assembly: "):
        segment_image(tiny2d[0], image, stage_progress=stop_in_assembly, block=block)


@pytest.mark.parametrize("measured, passes, chosen", [
    # objects twice the training size: the 1/4 probe's first estimate (0.45, rounded 0.42)
    # is refined by the 1/2 probe, whose objects measure the training size
    ({0.25: 12.7, 0.5: 23.0}, [0.25, 0.5], 0.5),
    # objects 1.8x the training size, not in reach of the 1/2 probe's refinement: the pass
    # at the estimate measures them as fragments (14 px), so the 1/2 probe is kept
    ({0.5: 19.0, 0.5946: 14.0}, [0.5, 0.5946], 0.5),
    # objects at the training size: 1/2 probe, then scale 1
    ({0.5: 12.0, 1.0: 23.5}, [0.5, 1.0], 1.0),
    # objects at 0.4 of the training size: only scale 1 counts, then 2.38 is kept
    ({0.5: 4.0, 1.0: 9.5, 2.3784: 22.0}, [0.5, 1.0, 2.3784], 2.3784),
])
def test_auto_scale_decision(nuclei2d, monkeypatch, measured, passes, chosen):
    """The choice among probe passes, with the measured object sizes given per scale
    (training diameter 23 px; a 256 x 256 image skips the 1/4 probe, 512 x 512 runs it)."""
    from ppp_zoo.runtime.segment import Segmenter, SegmentResult

    monkeypatch.setattr(type(nuclei2d.package), "object_diameter", property(lambda self: 23.0))
    run = []

    def fake(self, img, scale, **kwargs):
        run.append(scale)
        labels = np.zeros(img.shape[1:], np.int32)
        return SegmentResult(labels, 0, {"inference": 0.0}, scale, 1, ()), \
            measured.get(round(scale, 4))

    monkeypatch.setattr(Segmenter, "_segment_at", fake)
    size = 512 if 0.25 in measured else 256
    image = np.random.default_rng(0).random((size, size)).astype(np.float32)
    result = nuclei2d.segment(image, scale="auto")
    assert [round(s, 4) for s in run] == passes, run
    assert result.scale == chosen, result.auto_scale
