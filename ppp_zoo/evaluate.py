"""Instance segmentation metrics as the PatchPerPix paper reports them.

Definitions
-----------
Instances are given either as a *label image* of spatial shape ``S`` (0 is background, every
other id is one instance; ids need not be consecutive) or, with ``overlapping=True``, as a
*mask stack* of shape ``(N, *S)`` holding one boolean (or 0/1) mask per instance, so that
instances may overlap (e.g. crossing worms). All-zero masks are dropped and ``N`` may be 0.

Per image, the intersection over union of every ground-truth (gt) and predicted instance is
computed; mask stacks are compared mask against mask. At an IoU threshold ``t`` the
predicted instances are matched one to one with the gt instances (Hungarian matching); the
matching has the largest possible number of pairs with IoU >= t and, among those, the largest
summed IoU. With TP the number of such pairs,

    FP = n_pred - TP,   FN = n_gt - TP,   AP_t = TP / (TP + FP + FN)

and ``AP_t = 1`` when both images are empty (0 / 0). ``AP_t`` is what ``stardist.matching``
calls "accuracy". It is computed for ``t = 0.1, 0.15, ..., 0.95`` (:data:`THRESHOLDS`) and
stored under the keys ``"0.1", "0.15", ..., "0.95"``.

* ``avAP``: mean of ``AP_t`` over ``t`` in {0.5, 0.6, 0.7, 0.8, 0.9} (the paper's avAP);
* ``avAP_50_95``: mean of ``AP_t`` over ``t`` in 0.5:0.95 in steps of 0.05.

A data set is scored as the mean over its images of the per-image ``AP_t`` (as the paper
does); the AP of the summed TP/FP/FN counts over all images is reported as ``ap_pooled``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import UserError
from .postprocess.labels import relabel_consecutive

__all__ = [
    "PAPER_THRESHOLDS",
    "THRESHOLDS",
    "THRESHOLDS_50_95",
    "DatasetEvalResult",
    "EvalResult",
    "evaluate_dataset",
    "evaluate_image",
    "iou_matrix",
    "relabel_sequential",
]

#: IoU thresholds at which AP is reported: 0.1, 0.15, ..., 0.95.
THRESHOLDS: tuple[float, ...] = tuple(round(0.1 + 0.05 * i, 2) for i in range(18))
#: Thresholds averaged into the paper's avAP.
PAPER_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Thresholds averaged into ``avAP_50_95``.
THRESHOLDS_50_95: tuple[float, ...] = tuple(t for t in THRESHOLDS if t >= 0.5)

# pixels per block in the mask-stack product: float32 sums of 0/1 stay exact below 2**24
_MASK_BLOCK = 1 << 20


def _key(t: float) -> str:
    """Dictionary key of threshold ``t``: ``0.5 -> "0.5"``, ``0.15 -> "0.15"``."""
    return f"{round(t, 2):g}"


def _safe_ratio(num: float, den: float, empty: float = 1.0) -> float:
    """``num / den``, or ``empty`` when ``den`` is 0 (both instance sets empty)."""
    return float(num) / float(den) if den > 0 else float(empty)


# --------------------------------------------------------------------------- validation
def _validate_labels(arr: Any, name: str) -> np.ndarray:
    """A non-negative integer (or boolean) label image, as an ndarray."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biu":
        raise UserError(
            f"{name} must hold integer labels or boolean masks, got dtype {arr.dtype} "
            f"(shape {arr.shape})"
        )
    if arr.ndim == 0:
        raise UserError(f"{name} must be an image with at least one axis, got shape {arr.shape}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise UserError(
            f"{name} labels must be non-negative, got minimum {arr.min()} (shape {arr.shape})"
        )
    return arr


def _validate_masks(arr: Any, name: str) -> np.ndarray:
    """A stack of instance masks (N, *S) holding only 0 and 1, as an ndarray."""
    arr = _validate_labels(arr, name)
    if arr.ndim < 3:
        raise UserError(
            f"{name} must be a mask stack (N, [Z,] Y, X) with overlapping=True, "
            f"got shape {arr.shape}"
        )
    if arr.dtype.kind != "b" and arr.size and arr.max() > 1:
        raise UserError(
            f"{name} must hold binary masks (0/1) with overlapping=True, got maximum {arr.max()} "
            f"(shape {arr.shape}); pass a label image with overlapping=False instead"
        )
    return arr


def _validate_pair(pred: Any, gt: Any, overlapping: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``pred`` and ``gt`` with equal spatial shapes."""
    if overlapping:
        pred, gt = _validate_masks(pred, "pred"), _validate_masks(gt, "gt")
        spatial_pred, spatial_gt = pred.shape[1:], gt.shape[1:]
    else:
        pred, gt = _validate_labels(pred, "pred"), _validate_labels(gt, "gt")
        spatial_pred, spatial_gt = pred.shape, gt.shape
    if spatial_pred != spatial_gt:
        what = "spatial shapes (after the mask axis)" if overlapping else "shapes"
        raise UserError(
            f"pred and gt differ in {what}: pred {pred.shape} vs gt {gt.shape}"
        )
    return pred, gt


# --------------------------------------------------------------------------- relabelling
def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids of a validated label image; same shape and dtype."""
    return relabel_consecutive(labels)


def relabel_sequential(labels: Any) -> np.ndarray:
    """Map the instance ids of a label image to ``1..N``, keeping their order.

    Parameters
    ----------
    labels : ndarray of int or bool, shape S
        Label image; 0 is background and stays 0, the other ids need not be consecutive.

    Returns
    -------
    ndarray, shape S, same dtype as ``labels``
        The ``k``-th smallest non-zero id becomes ``k``.

    Raises
    ------
    ValueError
        If ``labels`` is not an integer or boolean array, or holds negative ids.

    Examples
    --------
    >>> import numpy as np
    >>> relabel_sequential(np.array([[0, 7, 7], [3, 0, 12]], dtype=np.uint16))
    array([[0, 2, 2],
           [1, 0, 3]], dtype=uint16)
    """
    return _relabel(_validate_labels(labels, "labels"))


# --------------------------------------------------------------------------- IoU
def _iou_labels(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU (n_gt, n_pred) of two label images with consecutive ids 1..n.

    Precondition: same shape, non-negative consecutive ids (see :func:`_relabel`).
    """
    p = pred.ravel().astype(np.int64)
    g = gt.ravel().astype(np.int64)
    n_pred, n_gt = int(p.max(initial=0)), int(g.max(initial=0))
    # joint histogram: entry [i, j] counts the pixels with pred id i and gt id j
    joint = np.bincount(p * (n_gt + 1) + g, minlength=(n_pred + 1) * (n_gt + 1))
    joint = joint.reshape(n_pred + 1, n_gt + 1).T  # (gt, pred)
    inter = joint[1:, 1:]
    area_gt = joint[1:, :].sum(axis=1)
    area_pred = joint[:, 1:].sum(axis=0)
    return _iou_from_counts(inter, area_gt, area_pred)


def _nonempty_masks(stack: np.ndarray) -> np.ndarray:
    """(N', npix) boolean matrix of the non-empty masks of a validated mask stack."""
    masks = stack.reshape(stack.shape[0], int(np.prod(stack.shape[1:])))
    masks = masks if masks.dtype == bool else masks.astype(bool)
    return masks[masks.any(axis=1)]


def _iou_masks(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU (n_gt, n_pred) of two (N, npix) boolean mask matrices.

    Precondition: boolean, same number of columns. Intersections are float32 matrix
    products over the pixels covered by both sets, in blocks of at most ``_MASK_BLOCK``
    pixels (so the float32 sums are exact), accumulated as integers.
    """
    n_gt, n_pred = gt.shape[0], pred.shape[0]
    area_gt = np.count_nonzero(gt, axis=1)
    area_pred = np.count_nonzero(pred, axis=1)
    inter = np.zeros((n_gt, n_pred), dtype=np.int64)
    if n_gt and n_pred:
        # only pixels inside some gt and some predicted mask can add to an intersection
        both = np.flatnonzero(gt.any(axis=0) & pred.any(axis=0))
        for start in range(0, both.size, _MASK_BLOCK):
            block = both[start:start + _MASK_BLOCK]
            g = gt[:, block].astype(np.float32)
            p = pred[:, block].astype(np.float32)
            inter += np.rint(g @ p.T).astype(np.int64)
    return _iou_from_counts(inter, area_gt, area_pred)


def _iou_from_counts(inter: np.ndarray, area_gt: np.ndarray, area_pred: np.ndarray) -> np.ndarray:
    """IoU from pixel counts: ``inter / (area_gt + area_pred - inter)``, 0 where the union is 0."""
    inter = inter.astype(np.float64)
    union = area_gt[:, None].astype(np.float64) + area_pred[None, :] - inter
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def _iou(pred: np.ndarray, gt: np.ndarray, overlapping: bool) -> np.ndarray:
    """IoU matrix (n_gt, n_pred) of a validated pair; relabels label images first."""
    if overlapping:
        return _iou_masks(_nonempty_masks(pred), _nonempty_masks(gt))
    return _iou_labels(_relabel(pred), _relabel(gt))


def iou_matrix(pred: Any, gt: Any, *, overlapping: bool = False) -> np.ndarray:
    """Intersection over union of every pair of ground-truth and predicted instances.

    Parameters
    ----------
    pred, gt : ndarray
        Label images of equal shape S (integer or boolean; ids need not be consecutive), or
        with ``overlapping=True`` mask stacks of shapes (N_pred, *S) and (N_gt, *S).
    overlapping : bool, optional
        Inputs are mask stacks; empty masks are dropped.

    Returns
    -------
    ndarray of float64, shape (n_gt, n_pred)
        Entry ``[i, j]`` is the IoU of the ``i``-th gt and ``j``-th predicted instance, in
        increasing order of their ids (label images) or their position in the stack.

    Raises
    ------
    ValueError
        On a shape mismatch, a non-integer dtype, negative ids or non-binary masks.

    Examples
    --------
    >>> import numpy as np
    >>> iou_matrix(np.array([[1, 1, 0, 2]]), np.array([[5, 5, 5, 0]]))
    array([[0.66666667, 0.        ]])
    """
    pred, gt = _validate_pair(pred, gt, overlapping)
    return _iou(pred, gt, overlapping)


# --------------------------------------------------------------------------- matching
def _match(iou: np.ndarray, t: float) -> np.ndarray:
    """IoUs of the matched pairs at threshold ``t`` (their number is TP).

    The matching has the most pairs with IoU >= t, and among those the largest summed IoU.
    Only rows and columns with some IoU >= t take part.
    """
    ok = iou >= t
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
    if rows.size == 0:
        return np.zeros(0)
    sub, sub_ok = iou[np.ix_(rows, cols)], ok[np.ix_(rows, cols)]
    n = min(sub.shape)
    # one more pair above t outweighs any IoU bonus: the bonuses of n pairs sum to < 1/2
    cost = -(sub_ok + np.where(sub_ok, sub, 0.0) / (2.0 * n))
    r, c = linear_sum_assignment(cost)
    good = sub_ok[r, c]
    return sub[r[good], c[good]]


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Scores of one image.

    Attributes
    ----------
    ap, tp, fp, fn : dict
        ``AP_t`` (float) and the TP/FP/FN counts (int), keyed by ``"0.1", ..., "0.95"``.
    avAP : float
        Mean ``AP_t`` over t in {0.5, 0.6, 0.7, 0.8, 0.9}.
    avAP_50_95 : float
        Mean ``AP_t`` over t in 0.5:0.95:0.05.
    n_pred, n_gt : int
        Number of predicted and ground-truth instances.
    mean_matched_iou : float
        Mean IoU of the pairs matched at t = 0.5 (0.0 when there are none).
    """

    ap: dict[str, float]
    tp: dict[str, int]
    fp: dict[str, int]
    fn: dict[str, int]
    avAP: float
    avAP_50_95: float
    n_pred: int
    n_gt: int
    mean_matched_iou: float

    def to_dict(self) -> dict[str, Any]:
        """The scores as built-in types, ready for :func:`json.dumps`."""
        return {
            "ap": {k: float(v) for k, v in self.ap.items()},
            "tp": {k: int(v) for k, v in self.tp.items()},
            "fp": {k: int(v) for k, v in self.fp.items()},
            "fn": {k: int(v) for k, v in self.fn.items()},
            "avAP": float(self.avAP),
            "avAP_50_95": float(self.avAP_50_95),
            "n_pred": int(self.n_pred),
            "n_gt": int(self.n_gt),
            "mean_matched_iou": float(self.mean_matched_iou),
        }


@dataclasses.dataclass(frozen=True)
class DatasetEvalResult:
    """Scores of a data set.

    Attributes
    ----------
    ap : dict
        Mean over images of ``AP_t``, keyed by ``"0.1", ..., "0.95"``.
    avAP, avAP_50_95 : float
        The averages of ``ap`` (equal to the mean of the per-image values).
    ap_pooled : dict
        ``AP_t`` of the TP/FP/FN counts summed over all images.
    tp, fp, fn : dict
        Those summed counts.
    n_images, n_pred, n_gt : int
        Number of images and of predicted / ground-truth instances in all of them.
    per_image : tuple of EvalResult
        The scores of each image, in input order.
    """

    ap: dict[str, float]
    avAP: float
    avAP_50_95: float
    ap_pooled: dict[str, float]
    tp: dict[str, int]
    fp: dict[str, int]
    fn: dict[str, int]
    n_images: int
    n_pred: int
    n_gt: int
    per_image: tuple[EvalResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """The scores as built-in types, ready for :func:`json.dumps`."""
        return {
            "ap": {k: float(v) for k, v in self.ap.items()},
            "avAP": float(self.avAP),
            "avAP_50_95": float(self.avAP_50_95),
            "ap_pooled": {k: float(v) for k, v in self.ap_pooled.items()},
            "tp": {k: int(v) for k, v in self.tp.items()},
            "fp": {k: int(v) for k, v in self.fp.items()},
            "fn": {k: int(v) for k, v in self.fn.items()},
            "n_images": int(self.n_images),
            "n_pred": int(self.n_pred),
            "n_gt": int(self.n_gt),
            "per_image": [r.to_dict() for r in self.per_image],
        }


def _averages(ap: dict[str, float]) -> tuple[float, float]:
    """(avAP, avAP_50_95) of per-threshold APs."""
    av = float(np.mean([ap[_key(t)] for t in PAPER_THRESHOLDS]))
    av_50_95 = float(np.mean([ap[_key(t)] for t in THRESHOLDS_50_95]))
    return av, av_50_95


def _score(iou: np.ndarray) -> EvalResult:
    """Counts and APs at every threshold from an IoU matrix (n_gt, n_pred)."""
    n_gt, n_pred = iou.shape
    ap: dict[str, float] = {}
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    fn: dict[str, int] = {}
    matched_at_half = np.zeros(0)
    for t in THRESHOLDS:
        k = _key(t)
        matched = _match(iou, t)
        n_tp = int(matched.size)
        tp[k], fp[k], fn[k] = n_tp, n_pred - n_tp, n_gt - n_tp
        ap[k] = _safe_ratio(n_tp, n_tp + fp[k] + fn[k])
        if k == "0.5":
            matched_at_half = matched
    av, av_50_95 = _averages(ap)
    mean_iou = float(matched_at_half.mean()) if matched_at_half.size else 0.0
    return EvalResult(ap=ap, tp=tp, fp=fp, fn=fn, avAP=av, avAP_50_95=av_50_95,
                      n_pred=int(n_pred), n_gt=int(n_gt), mean_matched_iou=mean_iou)


# --------------------------------------------------------------------------- public API
def evaluate_image(pred: Any, gt: Any, *, overlapping: bool = False) -> EvalResult:
    """Match predicted to ground-truth instances and compute AP at every IoU threshold.

    Parameters
    ----------
    pred, gt : ndarray
        Label images of equal shape S, e.g. (Y, X) or (Z, Y, X): integer or boolean,
        0 is background, ids need not be consecutive (both are relabelled to 1..N). With
        ``overlapping=True``: mask stacks of shapes (N_pred, *S) and (N_gt, *S), boolean or
        0/1, one instance per mask (all-zero masks are dropped; N may be 0).
    overlapping : bool, optional
        Inputs are mask stacks, compared mask against mask (instances may overlap).

    Returns
    -------
    EvalResult
        ``AP_t = TP / (TP + FP + FN)`` and the counts for t = 0.1, 0.15, ..., 0.95, the
        paper's ``avAP`` (mean over 0.5, 0.6, 0.7, 0.8, 0.9) and ``avAP_50_95``.

    Raises
    ------
    ValueError
        If the (spatial) shapes differ, a dtype is not integer/boolean, an id is negative,
        or (``overlapping=True``) an input is not a stack of binary masks.

    See Also
    --------
    evaluate_dataset : the mean over several images.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((8, 8), int); gt[:4] = 5; gt[4:] = 9
    >>> pred = np.zeros((8, 8), int); pred[:3] = 1
    >>> r = evaluate_image(pred, gt)
    >>> r.n_pred, r.n_gt, r.tp["0.5"], r.ap["0.5"], r.ap["0.8"]
    (1, 2, 1, 0.5, 0.0)
    """
    pred, gt = _validate_pair(pred, gt, overlapping)
    return _score(_iou(pred, gt, overlapping))


def evaluate_dataset(pairs: Iterable[tuple[Any, Any]], *,
                     overlapping: bool = False) -> DatasetEvalResult:
    """Score (pred, gt) pairs: AP averaged over images, plus AP of the pooled counts.

    Parameters
    ----------
    pairs : iterable of (pred, gt)
        One pair per image, as accepted by :func:`evaluate_image`; images may differ in shape.
    overlapping : bool, optional
        All inputs are mask stacks (see :func:`evaluate_image`).

    Returns
    -------
    DatasetEvalResult
        ``ap``: the mean of the per-image ``AP_t`` (the paper's protocol); ``ap_pooled``:
        ``AP_t`` of the TP/FP/FN counts summed over images; ``per_image``: each image's scores.

    Raises
    ------
    ValueError
        If ``pairs`` is empty or a pair is invalid (the message names the pair's index).

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[1, 1, 0, 2]])
    >>> half = np.array([[1, 1, 0, 0]])
    >>> r = evaluate_dataset([(gt, gt), (half, gt)])
    >>> r.per_image[1].ap["0.5"], r.ap["0.5"], r.ap_pooled["0.5"]
    (0.5, 0.75, 0.75)
    """
    results = []
    for index, pair in enumerate(pairs):
        try:
            pred, gt = pair
            results.append(evaluate_image(pred, gt, overlapping=overlapping))
        except ValueError as err:
            raise UserError(f"pair {index}: {err}") from err
    if not results:
        raise UserError("evaluate_dataset needs at least one (pred, gt) pair, got none")
    keys = [_key(t) for t in THRESHOLDS]
    ap = {k: float(np.mean([r.ap[k] for r in results])) for k in keys}
    tp = {k: sum(r.tp[k] for r in results) for k in keys}
    fp = {k: sum(r.fp[k] for r in results) for k in keys}
    fn = {k: sum(r.fn[k] for r in results) for k in keys}
    pooled = {k: _safe_ratio(tp[k], tp[k] + fp[k] + fn[k]) for k in keys}
    av, av_50_95 = _averages(ap)
    return DatasetEvalResult(
        ap=ap, avAP=av, avAP_50_95=av_50_95, ap_pooled=pooled, tp=tp, fp=fp, fn=fn,
        n_images=len(results), n_pred=sum(r.n_pred for r in results),
        n_gt=sum(r.n_gt for r in results), per_image=tuple(results),
    )
