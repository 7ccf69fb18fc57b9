"""Instance segmentation metrics as the PatchPerPix paper reports them.

Per image, predicted and ground-truth instances are matched one to one (Hungarian matching
on IoU). At an IoU threshold t a match counts as a true positive when its IoU >= t; the
matching maximises the number of such pairs (then their summed IoU). With TP the matches,
FP = #pred - TP and FN = #gt - TP:

    AP_t = TP / (TP + FP + FN)        (1 when both sets are empty)

for t = 0.1, 0.15, ..., 0.95. ``avAP`` is the mean over t in {0.5, 0.6, 0.7, 0.8, 0.9} (the
paper's definition); ``avAP_50_95`` the mean over 0.5:0.95:0.05. A data set's AP is the mean
of the per-image values (as in the paper); pooled counts are reported too.

Instances are given as label images (0 = background; ids need not be consecutive) or, for
overlapping instances, as stacks of binary masks (N, [Z,] Y, X), matched mask against mask.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

THRESHOLDS = tuple(round(0.1 + 0.05 * i, 2) for i in range(18))
PAPER_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _key(t: float) -> str:
    return f"{round(t, 2):g}"


def _ratio(num: float, den: float, empty: float = 1.0) -> float:
    """num / den, with ``empty`` for 0 / 0."""
    return float(num) / float(den) if den else empty


# --------------------------------------------------------------------------- validation
def _validate_instances(arr, name: str, overlapping: bool) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name} must hold integer labels (or boolean masks), got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {arr.min()}")
    if overlapping and arr.ndim < 3:
        raise ValueError(f"{name} must be an (N, [Z,] Y, X) mask stack with overlapping=True, "
                         f"got shape {arr.shape}")
    return arr


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Map the ids of a label image to 1..N (order kept); background 0 stays 0.

    Examples
    --------
    >>> relabel_sequential(np.array([[0, 7, 7], [3, 0, 12]])).tolist()
    [[0, 2, 2], [1, 0, 3]]
    """
    labels = np.asarray(labels)
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids.size and ids[0] == 0:
        new = np.arange(ids.size)
    else:
        new = np.arange(1, ids.size + 1)
    return new[inverse].reshape(labels.shape).astype(np.int64)


def _as_masks(arr: np.ndarray) -> np.ndarray:
    """(N, npix) boolean masks of a mask stack, empty masks dropped."""
    masks = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:]))).astype(bool)
    return masks[masks.any(axis=1)]


def iou_matrix(pred, gt, *, overlapping: bool = False) -> np.ndarray:
    """IoU of every (gt, pred) instance pair, shape (n_gt, n_pred).

    Label images are compared through their joint histogram; mask stacks through products
    of their (N, pixels) matrices.
    """
    if overlapping:
        p, g = _as_masks(pred), _as_masks(gt)
        inter = g.astype(np.float32) @ p.astype(np.float32).T
        area_g, area_p = g.sum(axis=1), p.sum(axis=1)
    else:
        p, g = relabel_sequential(pred).ravel(), relabel_sequential(gt).ravel()
        n_p, n_g = int(p.max(initial=0)), int(g.max(initial=0))
        joint = np.bincount(g * (n_p + 1) + p, minlength=(n_g + 1) * (n_p + 1))
        joint = joint.reshape(n_g + 1, n_p + 1)
        inter = joint[1:, 1:].astype(np.float64)
        area_g, area_p = joint[1:].sum(axis=1), joint[:, 1:].sum(axis=0)
    union = area_g[:, None] + area_p[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


def _true_positives(iou: np.ndarray, t: float) -> tuple[int, np.ndarray]:
    """Most one-to-one pairs with IoU >= t (ties: largest summed IoU); (TP, matched IoUs)."""
    if iou.size == 0:
        return 0, np.zeros(0)
    ok = iou >= t
    if not ok.any():
        return 0, np.zeros(0)
    n = min(iou.shape)
    # a pair above t is worth more than any sum of IoU bonuses (each < 1 / (2n))
    cost = -(ok.astype(np.float64) + iou * ok / (2.0 * n))
    rows, cols = linear_sum_assignment(cost)
    good = ok[rows, cols]
    return int(good.sum()), iou[rows, cols][good]


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Scores of one image. ``ap``/``tp``/``fp``/``fn`` are keyed by "0.1" .. "0.95"."""

    ap: dict
    tp: dict
    fp: dict
    fn: dict
    avAP: float
    avAP_50_95: float
    n_pred: int
    n_gt: int
    mean_matched_iou: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DatasetEvalResult:
    """Scores of a data set: per-image means (``ap``, ``avAP``) and pooled counts."""

    ap: dict
    avAP: float
    avAP_50_95: float
    ap_pooled: dict
    n_images: int
    n_pred: int
    n_gt: int
    per_image: tuple

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["per_image"] = [r.to_dict() for r in self.per_image]
        return d


def _averages(ap: dict) -> tuple[float, float]:
    av = float(np.mean([ap[_key(t)] for t in PAPER_THRESHOLDS]))
    av95 = float(np.mean([ap[_key(t)] for t in THRESHOLDS if t >= 0.5]))
    return av, av95


def evaluate_image(pred, gt, *, overlapping: bool = False) -> EvalResult:
    """Match predicted to ground-truth instances and compute AP at every threshold.

    Parameters
    ----------
    pred, gt : ndarray
        Label images ([Z,] Y, X), or with ``overlapping=True`` mask stacks (N, [Z,] Y, X).
        Ids need not be consecutive.
    overlapping : bool
        Inputs are mask stacks; instances are compared mask against mask.

    Returns
    -------
    EvalResult

    Examples
    --------
    >>> gt = np.zeros((8, 8), int); gt[:4] = 5; gt[4:] = 9
    >>> pred = np.zeros((8, 8), int); pred[:3] = 1
    >>> r = evaluate_image(pred, gt)
    >>> r.ap["0.5"], r.ap["0.8"], r.n_pred, r.n_gt
    (0.5, 0.0, 1, 2)
    """
    pred = _validate_instances(pred, "pred", overlapping)
    gt = _validate_instances(gt, "gt", overlapping)
    spatial_p = pred.shape[1:] if overlapping else pred.shape
    spatial_g = gt.shape[1:] if overlapping else gt.shape
    if spatial_p != spatial_g:
        raise ValueError(f"pred and gt differ in shape: {pred.shape} vs {gt.shape}")
    iou = iou_matrix(pred, gt, overlapping=overlapping)
    n_gt, n_pred = iou.shape
    ap, tp, fp, fn = {}, {}, {}, {}
    matched = np.zeros(0)
    for t in THRESHOLDS:
        k = _key(t)
        n_tp, ious = _true_positives(iou, t)
        if k == "0.5":
            matched = ious
        tp[k], fp[k], fn[k] = n_tp, n_pred - n_tp, n_gt - n_tp
        ap[k] = _ratio(n_tp, n_tp + fp[k] + fn[k])
    av, av95 = _averages(ap)
    return EvalResult(ap, tp, fp, fn, av, av95, int(n_pred), int(n_gt),
                      float(matched.mean()) if matched.size else 0.0)


def evaluate_dataset(pairs: Iterable, *, overlapping: bool = False) -> DatasetEvalResult:
    """Evaluate (pred, gt) pairs; AP averaged over images, plus pooled counts.

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2]]); b = np.array([[1, 1, 0, 0]])
    >>> r = evaluate_dataset([(a, a), (b, a)])
    >>> r.ap["0.5"], r.ap_pooled["0.5"]
    (0.75, 0.75)
    """
    per_image = tuple(evaluate_image(p, g, overlapping=overlapping) for p, g in pairs)
    if not per_image:
        raise ValueError("evaluate_dataset needs at least one (pred, gt) pair")
    ap = {k: float(np.mean([r.ap[k] for r in per_image])) for k in per_image[0].ap}
    pooled = {}
    for k in ap:
        t = sum(r.tp[k] for r in per_image)
        den = t + sum(r.fp[k] for r in per_image) + sum(r.fn[k] for r in per_image)
        pooled[k] = _ratio(t, den)
    av, av95 = _averages(ap)
    return DatasetEvalResult(ap, av, av95, pooled, len(per_image),
                             sum(r.n_pred for r in per_image), sum(r.n_gt for r in per_image),
                             per_image)
