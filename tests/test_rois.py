"""ImageJ ROI sets: what `segment --rois` and `postprocess --rois` write, read back with
roifile (the reader Fiji's format is defined by) and filled again: one ROI per instance,
named by its id, covering the instance (rasterised IoU >= 0.9), for a label image of the
embedded model, overlapping worm masks and a 3D label image."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from ppp_zoo.cli import app
from ppp_zoo.rois import instance_rois, write_rois

roifile = pytest.importorskip("roifile")
runner = CliRunner()


def _filled(roi, shape) -> np.ndarray:
    """The pixels whose centres lie inside the ROI (its polygons filled even-odd, as a
    composite ROI of an instance with holes is)."""
    from skimage.draw import polygon

    mask = np.zeros(shape, bool)
    for xy in (roi.coordinates(multi=True) if roi.composite else [roi.coordinates()]):
        rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
        part = np.zeros(shape, bool)
        part[rr, cc] = True
        mask ^= part
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_segment_rois_round_trip_on_the_embedded_model(tmp_path):
    res = runner.invoke(app, ["segment", "--demo", "--scale", "1", "--rois", "-o",
                              str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(res.stdout)["images"]
    labels = tifffile.imread(tmp_path / "demo_input_labels.tif")
    path = tmp_path / "demo_input_rois.zip"
    assert str(path) in entry["files"]
    rois = roifile.roiread(path)
    assert len(rois) == labels.max() == entry["n_instances"] > 5
    assert sorted(int(r.name) for r in rois) == list(range(1, labels.max() + 1))
    ious = [_iou(_filled(r, labels.shape), labels == int(r.name)) for r in rois]
    assert min(ious) >= 0.9, min(ious)


def test_overlapping_masks_give_overlapping_rois(tmp_path):
    from ppp_zoo.data.synth import synth_worms

    _, masks = synth_worms((520, 696), n_worms=8, seed=3)
    assert (masks.sum(axis=0) > 1).any()  # worms that cross: pixels in two masks
    path = write_rois(tmp_path / "worms_rois.zip", masks)
    rois = roifile.roiread(path)
    assert [r.name for r in rois] == [str(i + 1) for i in range(len(masks))]
    filled = [_filled(r, masks.shape[1:]) for r in rois]
    assert min(_iou(f, m) for f, m in zip(filled, masks)) >= 0.9
    assert (np.sum(filled, axis=0) > 1).any()  # the ROIs overlap where the worms do


def test_an_instance_with_a_hole_or_in_parts_is_one_composite_roi():
    """A worm coiled around its own loop (a ring) and an instance in two parts: each one
    composite ROI, filled even-odd back to its pixels; a plain instance stays a polygon."""
    yy, xx = np.mgrid[:60, :80]
    ring = ((yy - 30) ** 2 + (xx - 25) ** 2 <= 18 ** 2) & ((yy - 30) ** 2 + (xx - 25) ** 2 >= 9 ** 2)
    parts = np.zeros((60, 80), bool)
    parts[5:15, 50:60] = parts[40:55, 62:75] = True
    blob = np.zeros((60, 80), bool)
    blob[20:35, 50:70] = True
    masks = np.stack([ring, parts, blob])
    rois = instance_rois(masks, overlapping=True)
    assert [r.composite for r in rois] == [True, True, False]
    for roi, mask in zip(rois, masks):
        assert _iou(_filled(roi, mask.shape), mask) >= 0.95


def test_3d_labels_give_one_roi_per_slice(nuclei3d_sample):
    _, labels = nuclei3d_sample
    labels = labels[:8, :64, :64]
    rois = instance_rois(labels)
    expected = sum(int((labels[z] == i).any()) for i in np.unique(labels[labels > 0])
                   for z in range(len(labels)))
    assert len(rois) == expected
    for roi in rois[:20]:
        name, z = roi.name.split("-z")
        assert roi.position == int(z)
        assert _iou(_filled(roi, labels.shape[1:]), labels[int(z) - 1] == int(name)) >= 0.5


def test_postprocess_rois_and_bad_input(tmp_path, dsb_sample):
    from ppp_zoo.data.targets import instance_targets

    _, labels = dsb_sample
    labels = labels[:128, :128]
    numinst, patches = instance_targets(labels, (9, 9))
    np.savez(tmp_path / "o.npz", numinst=numinst, patches=patches)
    res = runner.invoke(app, ["postprocess", str(tmp_path / "o.npz"), "-o",
                              str(tmp_path / "l.tif"), "--patchshape", "9x9", "--rois",
                              "--json"])
    assert res.exit_code == 0, res.output
    written = tifffile.imread(tmp_path / "l.tif")
    with zipfile.ZipFile(json.loads(res.stdout)["rois"]) as zf:
        assert len(zf.namelist()) == written.max()
    with pytest.raises(ValueError, match="integer array"):
        instance_rois(np.zeros((4, 4), np.float32))


def test_overlay_marks_the_pixels_instances_share():
    """The overlay of overlapping masks: each outline in its own colour, the shared pixels
    tinted (and only those)."""
    from ppp_zoo.runtime.batch import overlay_image

    masks = np.zeros((2, 40, 40), bool)
    masks[0, 5:25, 5:25] = True
    masks[1, 15:35, 15:35] = True
    rgb = overlay_image(np.zeros((40, 40), np.float32), masks)
    assert rgb[20, 20].tolist() != [0, 0, 0] and rgb[20, 20][0] > 100  # shared: tinted
    assert rgb[10, 10].tolist() == [0, 0, 0] and rgb[30, 30].tolist() == [0, 0, 0]
    assert rgb[5, 10].tolist() != rgb[34, 30].tolist()  # two outlines, two colours
