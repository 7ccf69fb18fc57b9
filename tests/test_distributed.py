"""Blocks on dask.distributed (ppp_zoo.runtime.distributed) and the large-image readers and
writers of ppp_zoo.io: OME-Zarr in and out, no seams on GT patches (oracle), the same
labels for 1 and 2 workers and for two block sizes, agreement with whole-image
segmentation, a failed block retried, and bad input refused without a label image left."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from ppp_zoo.data.targets import instance_targets  # noqa: E402
from ppp_zoo.evaluate import evaluate_image  # noqa: E402
from ppp_zoo.io import open_image_source, write_ome_zarr_image  # noqa: E402
from ppp_zoo.postprocess import AssemblyParams, assemble  # noqa: E402
from ppp_zoo.runtime import distributed as dist  # noqa: E402

PATCH = (9, 9)


class Oracle:
    """Block function: GT patches of a block of GT labels, assembled."""

    def __init__(self, patchshape):
        self.params = AssemblyParams(patchshape=patchshape)

    def __call__(self, labels):
        numinst, patches = instance_targets(labels, self.params.patchshape)
        return assemble(numinst, patches, self.params)


class FailOnce(Oracle):
    """Block function: the oracle, but the first block it is given (anywhere in the
    cluster: a marker file remembers) fails, by an exception or by killing the worker
    process it runs in."""

    def __init__(self, patchshape, marker: Path, kill: bool = False):
        super().__init__(patchshape)
        self.marker, self.kill = str(marker), kill

    def __call__(self, labels):
        if not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected failure")
        return super().__call__(labels)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def gt_mosaic(dsb_sample, tmp_path_factory):
    """2x1 mosaic of the DSB labels (512x1024, 250 nuclei) as OME-Zarr."""
    _, labels = dsb_sample
    mosaic = np.concatenate([labels, np.where(labels > 0, labels + labels.max(), 0)], axis=1)
    path = write_ome_zarr_image(tmp_path_factory.mktemp("gt") / "gt.ome.zarr",
                                mosaic.astype(np.uint32))
    return mosaic, path


def _labels(path, name, level="0"):
    return zarr.open_array(str(Path(path) / "labels" / name / level), mode="r")[...]


def _split_at_borders(out, gt, block):
    """GT instances that touch a block border and come out as more than one label."""
    split = 0
    for i in np.unique(gt[gt > 0]):
        ys, xs = np.nonzero(gt == i)
        crosses = (ys // block[0]).min() != (ys // block[0]).max() or \
            (xs // block[1]).min() != (xs // block[1]).max()
        if crosses and len(np.unique(out[gt == i])) > 1:
            split += 1
    return split


# --------------------------------------------------------------------------- io
def test_ome_zarr_levels_axes_scale_and_tiff_memmap(tmp_path):
    image = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200)
    write_ome_zarr_image(tmp_path / "a.ome.zarr", image, levels=2, scale=(0.5, 0.25))
    level1 = open_image_source(tmp_path / "a.ome.zarr", level=1)
    assert level1.space_shape == (150, 100) and level1.scale == (1.0, 0.5)
    assert (level1.read((slice(0, 3), slice(0, 4))) == image[:6:2, :8:2]).all()
    # NGFF 0.5 on zarr v3, with singleton t and c axes dropped on reading
    write_ome_zarr_image(tmp_path / "b.ome.zarr", image[None, None], "tcyx", zarr_format=3)
    src = open_image_source(tmp_path / "b.ome.zarr")
    assert src.axes == "tcyx" and src.zarr_format == 3 and src.space_axes == "yx"
    assert (src.read((slice(10, 20), slice(5, 9))) == image[10:20, 5:9]).all()
    import tifffile

    tifffile.imwrite(tmp_path / "c.tif", image)
    tif = open_image_source(tmp_path / "c.tif")
    assert isinstance(tif.array(), np.memmap) and (tif.read((slice(1, 2), slice(0, 200))) ==
                                                   image[1:2]).all()


def test_unreadable_zarr_inputs_are_one_line_errors(tmp_path):
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w", zarr_format=2)
    with pytest.raises(ValueError, match="no image in this zarr group"):
        open_image_source(tmp_path / "empty.zarr")
    write_ome_zarr_image(tmp_path / "a.ome.zarr", np.zeros((64, 64), np.uint8), levels=2)
    with pytest.raises(ValueError, match=r"resolution level 5 missing \(the image has levels 0-1\)"):
        open_image_source(tmp_path / "a.ome.zarr", level=5)


def test_merge_pairs_is_union_find_in_first_seen_order():
    counts = np.array([2, 1, 2])
    pairs = np.array([[0, 2, 2, 1], [2, 1, 1, 1], [1, 1, 2, 1]])
    assert dist.merge_pairs(counts, pairs).tolist() == [1, 2, 2, 2, 3]
    big = dist.merge_pairs(np.array([10**6]), np.array([[0, 1, 0, 10**6]]))
    assert big.max() == 10**6 - 1 and big[0] == big[-1] == 1


# --------------------------------------------------------------------------- oracle
@pytest.mark.slow
def test_oracle_has_no_seams_and_same_labels_for_1_and_2_workers(gt_mosaic, client, tmp_path):
    """GT patches: every nucleus comes back whole across block borders, for 1 and 2 workers
    the label images are identical, and they equal the GT up to renumbering."""
    distributed = pytest.importorskip("distributed")
    mosaic, path = gt_mosaic
    src = open_image_source(path)
    block, pad = (128, 128), tuple(3 * p for p in PATCH)
    crossing = sum(1 for i in np.unique(mosaic[mosaic > 0])
                   if len({(y // 128, x // 128) for y, x in zip(*np.nonzero(mosaic == i))}) > 1)
    assert crossing > 50  # the test has something to prove
    two = dist.run_blocks(src, Oracle(PATCH), block=block, pad=pad, strip=PATCH,
                          output=tmp_path / "two.zarr", name="gt", client=client)
    out2 = _labels(tmp_path / "two.zarr", "gt")
    assert two.n_instances == mosaic.max() == 250 and two.n_blocks == 32
    assert _split_at_borders(out2, mosaic, block) == 0
    assert evaluate_image(out2, mosaic).ap["0.9"] == 1.0
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c1:
        dist.run_blocks(src, Oracle(PATCH), block=block, pad=pad, strip=PATCH,
                        output=tmp_path / "one.zarr", name="gt", client=c1)
    assert np.array_equal(_labels(tmp_path / "one.zarr", "gt"), out2)
    # OME-Zarr label image: image-label metadata, labels listed, a 2-level pyramid
    attrs = json.loads((tmp_path / "two.zarr/labels/gt/.zattrs").read_text())
    assert "image-label" in attrs and len(attrs["multiscales"][0]["datasets"]) == 3
    assert json.loads((tmp_path / "two.zarr/labels/.zattrs").read_text()) == {"labels": ["gt"]}
    assert np.array_equal(_labels(tmp_path / "two.zarr", "gt", "1"), out2[::2, ::2])


def test_failed_block_is_retried_and_output_complete(gt_mosaic, client, tmp_path):
    mosaic, path = gt_mosaic
    src = open_image_source(path)
    marker = tmp_path / "failed"
    res = dist.run_blocks(src, FailOnce(PATCH, marker), block=(256, 256), pad=(27, 27),
                          strip=PATCH, output=tmp_path / "out.ome.zarr", name="gt",
                          client=client)
    assert marker.exists() and res.n_instances == 250
    assert evaluate_image(_labels(tmp_path / "out.ome.zarr", "gt"), mosaic).ap["0.9"] == 1.0


def test_killed_worker_gives_the_same_complete_output(gt_mosaic, tmp_path):
    """A worker process killed (SIGKILL) in the middle of a block: dask restarts it and runs
    the block again; the label image is complete and identical to an undisturbed run."""
    distributed = pytest.importorskip("distributed")
    mosaic, path = gt_mosaic
    src = open_image_source(path)
    kwargs = dict(block=(256, 256), pad=(27, 27), strip=PATCH, name="gt")
    marker = tmp_path / "killed"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=50) as cluster, \
            distributed.Client(cluster) as c:
        before = set(c.run(os.getpid).values())
        res = dist.run_blocks(src, FailOnce(PATCH, marker, kill=True), client=c,
                              output=tmp_path / "killed.zarr", **kwargs)
        killed = int(marker.read_text())
        c.wait_for_workers(2)
        after = set(c.run(os.getpid).values())
        dist.run_blocks(src, Oracle(PATCH), client=c, output=tmp_path / "calm.zarr", **kwargs)
    assert killed in before and killed not in after  # a real worker died and was replaced
    assert res.n_instances == 250
    out = _labels(tmp_path / "killed.zarr", "gt")
    assert np.array_equal(out, _labels(tmp_path / "calm.zarr", "gt"))
    assert evaluate_image(out, mosaic).ap["0.9"] == 1.0


def test_failing_block_leaves_no_label_image(gt_mosaic, client, tmp_path):
    """The block's own exception reaches the caller (with a note of the dask step), and no
    label image is left behind."""
    _, path = gt_mosaic
    with pytest.raises(RuntimeError, match="injected failure") as info:
        dist.run_blocks(open_image_source(path), FailOnce(PATCH, tmp_path / "m"),
                        block=(256, 256), pad=(27, 27), strip=PATCH,
                        output=tmp_path / "out.zarr", name="gt", client=client, retries=0)
    assert "segmenting a block" in "".join(getattr(info.value, "__notes__", []))
    assert not (tmp_path / "out.zarr" / "labels" / "gt").exists()
    assert not list((tmp_path / "out.zarr" / "labels").glob(".*partial*"))


# --------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def image_zarr(dsb_sample, tmp_path_factory):
    image, _ = dsb_sample
    crop = image[:, :320]
    return crop, write_ome_zarr_image(tmp_path_factory.mktemp("img") / "img.ome.zarr", crop)


@pytest.mark.slow
def test_segment_agrees_with_whole_image_and_across_block_sizes(image_zarr, client, tmp_path):
    """The default model on a DSB crop (512x320): blocks of 128 and of 192 against each
    other and against segmenting the whole image at once, AP@0.9 >= 0.98; labels inside
    the input's OME-Zarr, next to the image."""
    from ppp_zoo.runtime.models import resolve_model
    from ppp_zoo.runtime.segment import segment_image

    crop, path = image_zarr
    model = str(resolve_model(None))
    whole = segment_image(model, crop, device="cpu").labels
    results = {}
    for b in (128, 192):
        dist.segment_distributed(path, path, model=model, block=(b, b), name=f"b{b}",
                                 client=client)
        results[b] = _labels(path, f"b{b}")
    assert whole.max() > 50
    assert evaluate_image(results[128], whole).ap["0.9"] >= 0.98
    assert evaluate_image(results[192], results[128]).ap["0.9"] >= 0.98
    assert json.loads((Path(path) / "labels/.zattrs").read_text())["labels"] == ["b128", "b192"]


def test_bad_block_and_unwritable_output_are_refused(image_zarr, tmp_path):
    from ppp_zoo.runtime.models import resolve_model

    _, path = image_zarr
    model = str(resolve_model(None))
    with pytest.raises(ValueError, match="smaller than twice the halo 24x24"):
        dist.segment_distributed(path, tmp_path / "o.zarr", model=model, block=(32, 256))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot write there"):
        dist.segment_distributed(path, tmp_path / "file" / "o.zarr", model=model,
                                 block=(128, 128), workers=1)


# --------------------------------------------------------------------------- command line
def test_cli_bad_level_and_missing_extra_are_one_error_line(image_zarr, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ppp_zoo.cli import app

    _, path = image_zarr
    res = CliRunner().invoke(app, ["segment", str(path), "--level", "2", "-o",
                                   str(tmp_path / "o.zarr")])
    assert res.exit_code == 1
    assert res.output.strip() == f"error: {path}: resolution level 2 missing (the image has " \
                                 "levels 0-0)"
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)
    res = CliRunner().invoke(app, ["segment", str(path), "--block", "128x128", "-o",
                                   str(tmp_path / "o.zarr")])
    assert res.exit_code == 1 and 'pip install "ppp-zoo[dask]"' in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o.zarr").exists()


def test_postprocess_assembles_a_model_output_stored_in_zarr(dsb_sample, client, tmp_path):
    """The default model's output (numinst + features, as `segment --save-outputs` keeps it)
    stored as a zarr array: `postprocess --model --workers 2` decodes and assembles it block
    by block, and agrees with the whole-image assembly."""
    from typer.testing import CliRunner

    from ppp_zoo.cli import app
    from ppp_zoo.runtime import segment_image
    from ppp_zoo.runtime.models import embedded_model_path

    package = embedded_model_path()
    image = dsb_sample[0][:, 256:]
    result = segment_image(package, image, keep_outputs=True, device="cpu")
    prediction = result.outputs["prediction"]
    store = tmp_path / "prediction.zarr"
    z = zarr.open_array(str(store), mode="w", shape=prediction.shape, dtype="float32",
                        chunks=(prediction.shape[0], 128, 128))
    z[...] = prediction
    out = tmp_path / "labels.tif"
    res = CliRunner().invoke(app, ["postprocess", str(store), "--model", str(package),
                                   "--workers", "2", "--block", "128x128", "--json",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_blocks"] == 8 and summary["n_instances"] > 50
    import tifffile

    labels = tifffile.imread(out)
    assert labels.shape == image.shape
    assert evaluate_image(labels, result.labels).ap["0.9"] >= 0.98
    wrong = CliRunner().invoke(app, ["postprocess", str(store), "--patchshape", "5x5",
                                     "-o", str(tmp_path / "l.tif")])
    assert wrong.exit_code == 1 and "expected (28, Y, X)" in wrong.stderr
    assert not (tmp_path / "l.tif").exists()


class MaskOracle:
    """Block function: GT patches of a block of GT worm masks (stored as channels),
    assembled as overlapping instances."""

    def __init__(self, patchshape):
        self.params = AssemblyParams(patchshape=patchshape, overlapping=True)

    def __call__(self, masks):
        numinst, patches = instance_targets(np.asarray(masks) > 0, self.params.patchshape,
                                            overlapping=True)
        return assemble(numinst, patches, self.params)


class MaskSource:
    """A (N, Y, X) mask stack read block by block (``read`` as an ImageSource)."""

    def __init__(self, masks):
        self.masks = masks
        self.space_shape = masks.shape[1:]
        self.space_axes = "yx"

    def read(self, region):
        return self.masks[(slice(None),) + tuple(region)]


@pytest.fixture(scope="module")
def worm_masks():
    from ppp_zoo.data.synth import synth_worms

    _, masks = synth_worms((256, 320), n_worms=7, seed=4, length=(90, 150), width=(6, 9),
                           cross_fraction=0.8, posture="plain")
    return masks


def dist_iou(a, b):
    from ppp_zoo.evaluate import iou_matrix

    return iou_matrix(a, b, overlapping=True)


def _planes(path, names):
    return np.stack([_labels(path, n) for n in names])


def _as_masks(planes):
    ids = np.unique(planes[planes > 0])
    return np.stack([(planes == i).any(axis=0) for i in ids])


def test_overlapping_oracle_blocks_keep_crossings_and_agree_across_block_sizes(
        worm_masks, client, tmp_path):
    """Crossing worms on GT patches, block by block on dask: pixels lie in two instances,
    every worm comes back whole (one id across blocks), the label images hold no instance
    twice, and two block sizes (both over two patches) give the same instances as the whole
    image assembled at once."""
    patch = (17, 17)  # about twice the worms' width (11 x 11 cuts them at crossings)
    shared = worm_masks.sum(axis=0) >= 2
    assert shared.sum() > 20  # crossings to keep
    whole = assemble(*instance_targets(worm_masks, patch, overlapping=True),
                     AssemblyParams(patchshape=patch, overlapping=True))
    results = {}
    for block in ((64, 64), (96, 128)):
        grid, strip = dist.block_grid(worm_masks.shape[1:], patch, block)
        out = tmp_path / f"worms_{block[0]}.zarr"
        res = dist.run_mask_blocks(MaskSource(worm_masks), MaskOracle(patch), block=grid.block,
                                   pad=grid.pad, strip=strip, output=out, name="worms",
                                   client=client)
        planes = _planes(out, res.planes)
        assert res.planes[0] == "worms" and len(res.planes) >= 2
        ids = [set(np.unique(p[p > 0])) for p in planes]
        assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1:])
        masks = _as_masks(planes)
        assert (masks.sum(axis=0) >= 2).sum() > 20  # instances really share pixels
        assert evaluate_image(masks, worm_masks, overlapping=True).ap["0.9"] == 1.0
        results[block] = masks
    # the same worms for both block sizes and the whole image: the foreground cover is
    # greedy per block, so a mask may differ by a pixel or two at its rim, not more
    for masks in results.values():
        iou = dist_iou(masks, whole)
        assert len(masks) == len(whole) and (iou.max(axis=1) >= 0.99).all()
        assert sorted(iou.argmax(axis=1)) == list(range(len(whole)))
    listed = json.loads((tmp_path / "worms_64.zarr/labels/.zattrs").read_text())["labels"]
    assert listed == list(res.planes)


def test_overlapping_instances_are_refused_for_a_tiff_before_a_cluster_starts(tmp_path):
    """An overlapping model on the dask path writes OME-Zarr label images: a TIFF output
    is one clear error, before any worker starts, and nothing is written."""
    import time
    import zipfile

    import yaml

    from ppp_zoo.errors import UserError
    from ppp_zoo.runtime.models import embedded_model_path

    package = tmp_path / "overlapping.zip"
    with zipfile.ZipFile(embedded_model_path()) as zf, zipfile.ZipFile(package, "w") as out:
        for name in zf.namelist():
            data = zf.read(name)
            if name == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf["config"]["patchperpix"]["assembly"]["overlapping"] = True
                data = yaml.safe_dump(rdf).encode()
            out.writestr(name, data)
    image = write_ome_zarr_image(tmp_path / "img.ome.zarr", np.zeros((64, 64), np.uint16))
    t = time.perf_counter()
    with pytest.raises(UserError, match="overlapping instances"):
        dist.segment_distributed(image, tmp_path / "out.tif", model=package, workers=1)
    assert time.perf_counter() - t < 10
    assert not (tmp_path / "out.tif").exists()
