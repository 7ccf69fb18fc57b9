"""Metrics: equal to stardist.matching on real label pairs; overlaps; validation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from stardist.matching import matching

from ppp_zoo.evaluate import (THRESHOLDS, evaluate_dataset, evaluate_image, iou_matrix,
                              relabel_sequential)


def _perturbations(labels, rng):
    """Realistic prediction errors on a real label image (ids kept non-consecutive)."""
    ids = np.unique(labels)[1:]
    out = {}
    grown = labels.copy()
    for i in rng.choice(ids, len(ids) // 3, replace=False):
        mask = ndi.binary_dilation(labels == i, iterations=int(rng.integers(1, 3)))
        grown[mask & (grown == 0)] = i
    out["dilated"] = grown
    shrunk = labels.copy()
    for i in rng.choice(ids, len(ids) // 3, replace=False):
        m = labels == i
        shrunk[m & ~ndi.binary_erosion(m, iterations=int(rng.integers(1, 3)))] = 0
    out["eroded"] = shrunk
    removed = labels.copy()
    removed[np.isin(labels, rng.choice(ids, 20, replace=False))] = 0
    out["removed"] = removed
    merged = labels.copy()
    for i in rng.choice(ids, 15, replace=False):
        touching = np.unique(labels[ndi.binary_dilation(labels == i, iterations=2)])
        touching = touching[(touching != 0) & (touching != i)]
        if touching.size:
            merged[labels == touching[0]] = i
    out["merged"] = merged
    out["shifted"] = ndi.shift(labels, (3, -2), order=0)
    out["relabelled_random"] = (labels * 7 + 3) * (labels > 0)
    out["empty"] = np.zeros_like(labels)
    return out


def test_equals_stardist_matching_on_real_labels(dsb_sample, rng):
    _, labels = dsb_sample
    raw = labels.copy()
    raw[raw > 0] += 40  # non-consecutive ids, as in the original mask
    for name, pred in _perturbations(raw, rng).items():
        result = evaluate_image(pred, raw)
        for t in THRESHOLDS:
            ref = matching(raw, pred, thresh=t).accuracy
            assert abs(result.ap[f"{t:g}"] - ref) <= 1e-9, (name, t)


def test_identity_is_perfect(dsb_sample):
    _, labels = dsb_sample
    r = evaluate_image(labels, labels)
    assert all(v == 1.0 for v in r.ap.values()) and r.avAP == 1.0 and r.n_gt == 125
    assert r.mean_matched_iou == 1.0


def test_overlapping_crossing_masks():
    gt = np.zeros((2, 10, 10), bool)
    gt[0, 4:6, :] = True  # horizontal bar, 20 px
    gt[1, :, 4:6] = True  # vertical bar, 20 px; they share 4 px
    pred = np.zeros((3, 10, 10), bool)
    pred[0] = gt[0]  # IoU 1
    pred[1, 0:6, 4:6] = True  # 12 px inside the 20-px bar: IoU 0.6
    pred[2, 8:10, 0:2] = True  # false positive
    r = evaluate_image(pred, gt, overlapping=True)
    assert r.tp["0.5"] == 2 and r.fp["0.5"] == 1 and r.fn["0.5"] == 0
    assert r.ap["0.5"] == pytest.approx(2 / 3)
    assert r.tp["0.65"] == 1 and r.ap["0.65"] == pytest.approx(1 / 4)
    assert r.tp["0.95"] == 1


def test_mask_stack_equals_label_image_without_overlap(dsb_sample, rng):
    _, labels = dsb_sample
    crop = labels[:256, :256]
    pred = _perturbations(crop, rng)["eroded"]

    def stack(lab):
        lab = relabel_sequential(lab)
        return np.stack([lab == i for i in range(1, lab.max() + 1)])

    a = evaluate_image(pred, crop)
    b = evaluate_image(stack(pred), stack(crop), overlapping=True)
    assert a.ap == b.ap and a.n_pred == b.n_pred


def test_relabel_and_iou():
    lab = np.array([[0, 9, 9], [4, 0, 100]])
    assert relabel_sequential(lab).tolist() == [[0, 2, 2], [1, 0, 3]]
    iou = iou_matrix(np.array([[1, 1, 0, 2]]), np.array([[5, 5, 5, 0]]))
    np.testing.assert_allclose(iou, [[2 / 3, 0.0]])


@pytest.mark.parametrize("pred,gt,msg", [
    (np.zeros((4, 4), int), np.zeros((5, 4), int), "differ in shape"),
    (np.zeros((4, 4), float), np.zeros((4, 4), int), "integer labels"),
    (-np.ones((4, 4), int), np.zeros((4, 4), int), "non-negative"),
])
def test_validation(pred, gt, msg):
    with pytest.raises(ValueError, match=msg):
        evaluate_image(pred, gt)


def test_dataset_mean_and_pooled():
    gt = np.array([[1, 1, 0, 2, 2, 0, 3, 3]])
    perfect = gt.copy()
    half = np.array([[1, 1, 0, 0, 0, 0, 0, 0]])  # TP 1, FN 2 -> AP 1/3
    r = evaluate_dataset([(perfect, gt), (half, gt)])
    assert r.ap["0.5"] == pytest.approx((1 + 1 / 3) / 2)
    assert r.ap_pooled["0.5"] == pytest.approx(4 / 6)  # TP 4, FP 0, FN 2
    assert r.n_images == 2 and r.n_gt == 6 and r.n_pred == 4
    assert set(r.to_dict()) >= {"ap", "avAP", "avAP_50_95", "ap_pooled", "per_image"}
    with pytest.raises(ValueError):
        evaluate_dataset([])


def test_empty_mask_stacks():
    empty = np.zeros((0, 8, 8), bool)
    one = np.zeros((1, 8, 8), bool)
    one[0, 2:5, 2:5] = True
    assert evaluate_image(empty, empty, overlapping=True).ap["0.5"] == 1.0
    r = evaluate_image(empty, one, overlapping=True)
    assert r.ap["0.5"] == 0.0 and r.n_pred == 0 and r.n_gt == 1
