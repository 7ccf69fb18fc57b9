"""The embedded overlapping-worm model ``ppp-worms2d`` as a user runs it.

Held-out synthetic worms (seeds training never draws): through ``segment`` the masks of
crossing worms share pixels, and the worms are found (overlap-aware AP); the blockwise
assembly and the dask / OME-Zarr path give the same worms for two block sizes (both over
two patches); ``--rois`` writes one ROI per worm that fills it again; ``models`` lists it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from ppp_zoo.cli import app
from ppp_zoo.evaluate import evaluate_image, iou_matrix
from ppp_zoo.runtime.models import embedded_model_path, embedded_models
from ppp_zoo.runtime.segment import load_segmenter

NAME = "ppp-worms2d"
pytestmark = pytest.mark.skipif(NAME not in {m["name"] for m in embedded_models()},
                                reason=f"{NAME} is not embedded in this installation")
runner = CliRunner()
GEOMETRY = {"length": (70.0, 200.0), "width": (6.0, 11.0), "n_worms": 7, "cross_fraction": 0.8,
            "max_overlap": 0.3, "blur": 1.0, "photons": 60.0, "posture": "plain"}


@pytest.fixture(scope="module")
def worms():
    """Two held-out images, one per rendering (320 x 320, 7 worms each, crossing)."""
    from ppp_zoo.data.synth import synth_worms

    return [synth_worms((320, 320), seed=np.random.SeedSequence([4242, k]), rendering=r,
                        **GEOMETRY) for k, r in enumerate(("fluorescence", "brightfield"))]


@pytest.fixture(scope="module")
def segmenter():
    with load_segmenter(embedded_model_path(NAME), device="cpu") as seg:
        yield seg


@pytest.fixture(scope="module")
def whole(worms, segmenter):
    return [segmenter.segment(image).labels for image, _ in worms]


def _same_worms(a: np.ndarray, b: np.ndarray, iou: float = 0.99) -> bool:
    """One-to-one pairs of masks at IoU >= ``iou``."""
    if len(a) != len(b):
        return False
    if not len(a):
        return True
    m = iou_matrix(a, b, overlapping=True)
    return bool((m.max(axis=1) >= iou).all() and len(set(m.argmax(axis=1))) == len(b))


def test_worm_model_is_listed_after_the_default():
    names = [m["name"] for m in embedded_models()]
    assert names[0] == "ppp-nuclei2d" and NAME in names
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and NAME in res.output


def test_crossing_worms_share_pixels_and_are_found(worms, whole):
    for (image, gt), masks in zip(worms, whole):
        assert masks.dtype == bool and masks.shape[1:] == image.shape
        assert (gt.sum(axis=0) >= 2).any()
        assert (masks.sum(axis=0) >= 2).sum() > 10  # pixels that lie in two worms
        assert evaluate_image(masks, gt, overlapping=True).ap["0.5"] >= 0.7


def test_blockwise_assembly_gives_the_same_worms_for_two_block_sizes(worms, segmenter, whole):
    image, _ = worms[0]
    for block in ((128, 128), (160, 192)):  # both over two 25 x 25 patches
        masks = segmenter.segment(image, block=block).labels
        assert (masks.sum(axis=0) >= 2).any()
        assert _same_worms(masks, whole[0]), block


def test_dask_path_writes_overlapping_worms_as_label_images(worms, whole, tmp_path):
    pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr")
    from ppp_zoo.io import write_ome_zarr_image
    from ppp_zoo.runtime.distributed import segment_distributed

    image, _ = worms[0]
    source = write_ome_zarr_image(tmp_path / "worms.ome.zarr", image)
    res = segment_distributed(source, source, model=embedded_model_path(NAME), block=(160, 160),
                              name="worms", workers=1)
    assert res.planes[0] == "worms" and len(res.planes) >= 2
    planes = np.stack([zarr.open_array(str(tmp_path / "worms.ome.zarr" / "labels" / p / "0"),
                                       mode="r")[...] for p in res.planes])
    ids = np.unique(planes[planes > 0])
    masks = np.stack([(planes == i).any(axis=0) for i in ids])
    assert len(ids) == res.n_instances
    assert (masks.sum(axis=0) >= 2).any()
    assert _same_worms(masks, whole[0], iou=0.98)


def test_rois_round_trip_on_the_worm_model(worms, tmp_path):
    roifile = pytest.importorskip("roifile")
    from skimage.draw import polygon

    image, _ = worms[1]
    tifffile.imwrite(tmp_path / "worms.tif", image)
    res = runner.invoke(app, ["segment", str(tmp_path / "worms.tif"), "--model", NAME,
                              "--rois", "-o", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    masks = tifffile.imread(tmp_path / "out" / "worms_labels.tif").astype(bool)
    rois = roifile.roiread(tmp_path / "out" / "worms_rois.zip")
    assert len(rois) == len(masks) == json.loads(res.stdout)["images"][0]["n_instances"]
    for roi in rois:
        filled = np.zeros(image.shape, bool)
        for xy in (roi.coordinates(multi=True) if roi.composite else [roi.coordinates()]):
            rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, image.shape)
            part = np.zeros(image.shape, bool)
            part[rr, cc] = True
            filled ^= part
        mask = masks[int(roi.name) - 1]
        assert (filled & mask).sum() / (filled | mask).sum() >= 0.9
