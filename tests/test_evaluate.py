"""Metrics: equal to stardist.matching on a real label image; overlaps; relabelling; validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from ppp_zoo.evaluate import (
    PAPER_THRESHOLDS,
    THRESHOLDS,
    evaluate_dataset,
    evaluate_image,
    iou_matrix,
    relabel_sequential,
)

KEYS = [f"{t:g}" for t in THRESHOLDS]


@pytest.fixture(scope="module")
def mask2d():
    """The real 512x512 DSB label image shipped with stardist, ids as stored (not consecutive)."""
    tifffile = pytest.importorskip("tifffile")
    stardist = pytest.importorskip("stardist")
    labels = tifffile.imread(Path(stardist.__file__).parent / "data" / "images" / "mask2d.tif")
    ids = np.unique(labels)[1:]
    assert ids.size == 125 and ids.max() > ids.size  # guards the premise: ids skip values
    return labels


def _dilate(labels, ids, rng):
    """Grow each id in ``ids`` by 1-2 px, drawn over background and neighbours."""
    out = labels.copy()
    for i in ids:
        out[ndi.binary_dilation(labels == i, iterations=int(rng.integers(1, 3)))] = i
    return out


def _erode(labels, ids, rng):
    """Shrink each id in ``ids`` by 1-2 px (small instances may vanish)."""
    out = labels.copy()
    for i in ids:
        mask = labels == i
        out[mask & ~ndi.binary_erosion(mask, iterations=int(rng.integers(1, 3)))] = 0
    return out


def _merge(labels, ids):
    """Give a touching neighbour (within 2 px) of each id in ``ids`` that id."""
    out = labels.copy()
    for i in ids:
        near = np.unique(labels[ndi.binary_dilation(labels == i, iterations=2)])
        near = near[(near != 0) & (near != i)]
        if near.size:
            out[labels == near[0]] = i
    return out


def _shift(labels, rng):
    """Shift by a random offset of 1-4 px per axis (either sign)."""
    offset = rng.integers(1, 5, size=2) * rng.choice([-1, 1], size=2)
    return ndi.shift(labels, offset, order=0)


def _perturbations(labels, rng):
    """Realistic prediction errors of a label image; ids stay non-consecutive."""
    ids = np.unique(labels)[1:]

    def some(k):
        return rng.choice(ids, k, replace=False)

    removed = labels.copy()
    removed[np.isin(labels, some(20))] = 0
    cases = {
        "dilated": _dilate(labels, some(len(ids) // 3), rng),
        "eroded": _erode(labels, some(len(ids) // 3), rng),
        "dilated_and_eroded": _erode(_dilate(labels, some(40), rng), some(40), rng),
        "removed": removed,
        "merged": _merge(labels, some(15)),
        "shifted": _shift(labels, rng),
        "shifted_again": _shift(labels, rng),
        "empty": np.zeros_like(labels),
    }
    combined = _shift(_merge(_dilate(removed, some(30), rng), some(10)), rng)
    cases["combined"] = combined
    # different id set than gt: random distinct ids in a wider dtype
    new_ids = rng.permutation(np.arange(1, 10 * len(ids)))[: len(ids)]
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[ids] = new_ids
    cases["random_ids"] = lut[_dilate(labels, some(30), rng)]
    return cases


# --------------------------------------------------------------------------- stardist
def test_equals_stardist_accuracy_on_real_labels(mask2d):
    matching = pytest.importorskip("stardist.matching").matching
    rng = np.random.default_rng(20240611)
    for name, pred in _perturbations(mask2d, rng).items():
        result = evaluate_image(pred, mask2d)
        for t, key in zip(THRESHOLDS, KEYS):
            ref = matching(mask2d, pred, thresh=t)
            assert abs(result.ap[key] - ref.accuracy) <= 1e-9, (name, key)
            assert (result.tp[key], result.fp[key], result.fn[key]) == (ref.tp, ref.fp, ref.fn)
        assert result.n_gt == 125


def test_label_matching_maximises_pairs_before_iou():
    gt = np.zeros((3, 130), np.uint8)
    gt[:, :100], gt[:, 100:] = 1, 2  # A: 300 px, B: 90 px
    pred = np.zeros_like(gt)
    pred[:, 12:115], pred[:, :12] = 7, 9  # P: 309 px, Q: 36 px
    # IoU(A, P) = 264/345, IoU(B, P) = 45/354, IoU(A, Q) = 36/300, IoU(B, Q) = 0
    np.testing.assert_allclose(iou_matrix(pred, gt), [[264 / 345, 36 / 300], [45 / 354, 0]])
    r = evaluate_image(pred, gt)
    # at 0.1 the pairs (A, Q), (B, P) beat the larger-IoU single pair (A, P)
    assert r.tp["0.1"] == 2 and r.ap["0.1"] == 1.0
    assert r.tp["0.15"] == 1 and r.tp["0.75"] == 1 and r.tp["0.8"] == 0
    matching = pytest.importorskip("stardist.matching").matching
    for t, key in zip(THRESHOLDS, KEYS):
        assert r.ap[key] == pytest.approx(matching(gt, pred, thresh=t).accuracy, abs=1e-9)


def test_identity_is_perfect(mask2d):
    r = evaluate_image(mask2d, mask2d)
    assert r.ap == dict.fromkeys(KEYS, 1.0)
    assert r.avAP == 1.0 and r.avAP_50_95 == 1.0 and r.mean_matched_iou == 1.0
    assert r.n_pred == r.n_gt == 125 and set(r.fp.values()) == {0}


def test_input_not_mutated(mask2d):
    pred = mask2d[::-1].copy()
    before = pred.copy(), mask2d.copy()
    evaluate_image(pred, mask2d)
    np.testing.assert_array_equal(pred, before[0])
    np.testing.assert_array_equal(mask2d, before[1])


# --------------------------------------------------------------------------- overlaps
def _crossing_gt():
    """A horizontal and a vertical bar (20 px each) sharing 4 px."""
    gt = np.zeros((2, 10, 10), bool)
    gt[0, 4:6, :] = True
    gt[1, :, 4:6] = True
    return gt


def test_overlapping_crossing_masks_by_hand():
    gt = _crossing_gt()
    pred = np.zeros((4, 10, 10), np.uint8)
    pred[0] = gt[0]  # IoU with gt0: 1; with gt1: 4 / 36
    pred[1, 0:6, 4:6] = 1  # 12 px of the vertical bar: IoU 12/20 = 0.6; with gt0: 4 / 28
    pred[2, 8:10, 0:2] = 1  # touches nothing: false positive
    # pred[3] stays empty and is dropped
    expected_iou = [[1.0, 4 / 28, 0.0], [4 / 36, 0.6, 0.0]]
    np.testing.assert_allclose(iou_matrix(pred, gt, overlapping=True), expected_iou)

    r = evaluate_image(pred, gt, overlapping=True)
    assert r.n_pred == 3 and r.n_gt == 2
    # pairs (gt0, pred0) and (gt1, pred1) up to t = 0.6 (0.6 itself included), then one
    expected_tp = {k: (2 if t <= 0.6 else 1) for t, k in zip(THRESHOLDS, KEYS)}
    assert r.tp == expected_tp
    assert r.fp == {k: 3 - v for k, v in expected_tp.items()}
    assert r.fn == {k: 2 - v for k, v in expected_tp.items()}
    assert r.ap["0.6"] == pytest.approx(2 / 3) and r.ap["0.65"] == pytest.approx(1 / 4)
    assert r.avAP == pytest.approx((2 / 3 + 2 / 3 + 1 / 4 + 1 / 4 + 1 / 4) / 5)
    assert r.mean_matched_iou == pytest.approx(0.8)


def test_overlapping_matching_maximises_pairs_before_iou():
    gt = _crossing_gt()
    pred = np.zeros((2, 10, 10), bool)
    pred[0] = gt[0]  # IoU 1 with gt0, 4/36 = 0.111 with gt1
    pred[1, 4:6, 0:2] = True  # 4 px of gt0 only: IoU 0.2
    r = evaluate_image(pred, gt, overlapping=True)
    # at 0.1 matching pred0 to gt1 and pred1 to gt0 gives 2 pairs (the IoU-greedy choice, 1)
    assert r.tp["0.1"] == 2 and r.ap["0.1"] == 1.0
    assert all(r.tp[k] == 1 for k in KEYS[1:])
    assert r.ap["0.5"] == pytest.approx(1 / 3) and r.mean_matched_iou == 1.0


def test_mask_stack_equals_label_image_without_overlap(mask2d):
    rng = np.random.default_rng(7)
    cases = _perturbations(mask2d, rng)

    def stack(labels):
        ids = rng.permutation(np.unique(labels)[1:])
        masks = [labels == i for i in ids] + [np.zeros(labels.shape, bool)]  # one empty
        return np.stack(masks)

    for name in ("merged", "combined", "empty"):
        pred = cases[name]
        a = evaluate_image(pred, mask2d)
        b = evaluate_image(stack(pred), stack(mask2d).astype(np.uint8), overlapping=True)
        assert dataclasses.replace(a, mean_matched_iou=0.0) == dataclasses.replace(
            b, mean_matched_iou=0.0), name
        assert a.mean_matched_iou == pytest.approx(b.mean_matched_iou, abs=1e-12)


def test_empty_mask_stacks():
    empty = np.zeros((0, 8, 8), bool)
    one = np.zeros((1, 8, 8), bool)
    one[0, 2:5, 2:5] = True
    both_empty = evaluate_image(empty, np.zeros((3, 8, 8), bool), overlapping=True)
    assert both_empty.ap == dict.fromkeys(KEYS, 1.0) and both_empty.n_gt == 0
    r = evaluate_image(empty, one, overlapping=True)
    assert r.ap["0.5"] == 0.0 and (r.n_pred, r.n_gt, r.fn["0.5"]) == (0, 1, 1)
    assert iou_matrix(one, empty, overlapping=True).shape == (0, 1)


# --------------------------------------------------------------------------- relabelling
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.uint64])
def test_relabel_sequential_keeps_order_and_dtype(dtype):
    labels = np.array([[0, 9, 9], [4, 0, 100]], dtype=dtype)
    out = relabel_sequential(labels)
    assert out.dtype == dtype and out.tolist() == [[0, 2, 2], [1, 0, 3]]
    assert labels.tolist() == [[0, 9, 9], [4, 0, 100]]


def test_relabel_sequential_large_ids_and_no_background():
    big = np.array([[2**40, 7], [7, 2**40 + 1]], dtype=np.uint64)  # sort-based path
    assert relabel_sequential(big).tolist() == [[2, 1], [1, 3]]
    assert relabel_sequential(np.array([5, 3, 5])).tolist() == [2, 1, 2]
    assert relabel_sequential(np.zeros((2, 2), np.uint8)).tolist() == [[0, 0], [0, 0]]


def test_relabel_real_mask(mask2d):
    out = relabel_sequential(mask2d)
    assert np.array_equal(np.unique(out), np.arange(126))
    # the same partition of the pixels: a bijection between old and new ids
    pairs = np.unique(np.stack([mask2d.ravel(), out.ravel()]), axis=1)
    assert pairs.shape[1] == 126


def test_different_id_sets_give_the_same_scores():
    gt = np.array([[0, 3, 3, 0, 8, 8, 8, 0, 50]], np.uint16)
    pred = np.array([[11, 11, 11, 0, 2, 2, 0, 0, 99]], np.int64)
    r = evaluate_image(pred, gt)
    ref = evaluate_image(relabel_sequential(pred), relabel_sequential(gt))
    assert r == ref
    # IoU: (3,11) 2/3, (8,2) 2/3, (50,99) 1 -> TP 3 up to 0.65, then 1
    assert r.tp["0.65"] == 3 and r.tp["0.7"] == 1 and r.ap["0.7"] == pytest.approx(1 / 5)
    # rows: gt ids 3, 8, 50; columns: pred ids 2, 11, 99
    np.testing.assert_allclose(
        iou_matrix(pred, gt), [[0, 2 / 3, 0], [2 / 3, 0, 0], [0, 0, 1]])


def test_iou_matrix_by_hand():
    iou = iou_matrix(np.array([[1, 1, 0, 2]]), np.array([[5, 5, 5, 0]]))
    np.testing.assert_allclose(iou, [[2 / 3, 0.0]])
    assert iou_matrix(np.zeros((3, 3), int), np.ones((3, 3), bool)).shape == (1, 0)


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("pred,gt,overlapping,msg", [
    (np.zeros((4, 4), int), np.zeros((5, 4), int), False,
     r"differ in shapes: pred \(4, 4\) vs gt \(5, 4\)"),
    (np.zeros((2, 4, 4), bool), np.zeros((1, 4, 5), bool), True,
     r"differ in spatial shapes .*pred \(2, 4, 4\) vs gt \(1, 4, 5\)"),
    (np.zeros((4, 4), float), np.zeros((4, 4), int), False, "pred must hold integer labels"),
    (np.zeros((4, 4), int), np.full((4, 4), 0.5), False, "gt must hold integer.*float64"),
    (-np.ones((4, 4), int), np.zeros((4, 4), int), False, "non-negative, got minimum -1"),
    (np.zeros((4, 4), int), np.zeros((4, 4), int), True, r"mask stack .*shape \(4, 4\)"),
    (np.full((1, 4, 4), 3), np.zeros((1, 4, 4), int), True, "binary masks"),
])
def test_validation(pred, gt, overlapping, msg):
    with pytest.raises(ValueError, match=msg):
        evaluate_image(pred, gt, overlapping=overlapping)


def test_relabel_validation():
    with pytest.raises(ValueError, match="integer"):
        relabel_sequential(np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        relabel_sequential(np.array([0, -2]))


# --------------------------------------------------------------------------- data set
def test_dataset_mean_and_pooled_by_hand():
    gt_a = np.array([[1, 1, 0, 2, 2, 0, 3, 3]])  # 3 instances, predicted perfectly
    gt_b = np.array([[4, 4, 0, 7, 7, 7, 0, 0, 0]])  # 2 instances
    pred_b = np.array([[1, 1, 0, 0, 0, 0, 0, 5, 5]])  # 1 TP, 1 FP, 1 FN -> AP 1/3
    r = evaluate_dataset([(gt_a, gt_a), (pred_b, gt_b)])
    assert r.n_images == 2 and r.n_gt == 5 and r.n_pred == 5
    assert [p.ap["0.5"] for p in r.per_image] == [1.0, pytest.approx(1 / 3)]
    assert r.ap == {k: pytest.approx((1 + 1 / 3) / 2) for k in KEYS}
    assert (r.tp["0.5"], r.fp["0.5"], r.fn["0.5"]) == (4, 1, 1)
    assert r.ap_pooled["0.5"] == pytest.approx(4 / 6)
    assert r.avAP == pytest.approx(np.mean([p.avAP for p in r.per_image]))
    d = json.loads(json.dumps(r.to_dict()))
    assert {"ap", "avAP", "avAP_50_95", "ap_pooled", "n_pred", "n_gt", "per_image"} <= set(d)
    assert d["per_image"][1]["tp"]["0.5"] == 1


def test_dataset_errors():
    with pytest.raises(ValueError, match="at least one"):
        evaluate_dataset([])
    good = np.ones((2, 2), int)
    with pytest.raises(ValueError, match=r"pair 1: .*differ in shapes"):
        evaluate_dataset([(good, good), (good, np.ones((3, 2), int))])


def test_result_to_dict_is_json_ready(mask2d):
    d = evaluate_image(_erode(mask2d, np.unique(mask2d)[1:40], np.random.default_rng(3)),
                       mask2d).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert list(d["ap"]) == KEYS and len(KEYS) == 18
    assert KEYS[:3] == ["0.1", "0.15", "0.2"] and KEYS[8:10] == ["0.5", "0.55"]
    assert KEYS[-1] == "0.95"
    assert d["avAP"] == pytest.approx(np.mean([d["ap"][f"{t:g}"] for t in PAPER_THRESHOLDS]))
    assert d["avAP_50_95"] == pytest.approx(np.mean([d["ap"][k] for k in KEYS[8:]]))
    assert all(type(v) is int for v in d["tp"].values()) and type(d["n_gt"]) is int
