"""Small numpy helpers on label images shared by the whole package (numpy only).

- :func:`relabel_consecutive`: instance ids to ``1..N`` (0 stays background).
- :func:`instance_sizes` and :func:`equivalent_diameter`: the object size that training
  records in a checkpoint and that ``ppp-zoo segment`` compares against for its ``--scale``
  hint, computed the same way in both places.
"""

from __future__ import annotations

import math

import numpy as np

#: a lookup table is used when the largest id is at most this many times the pixel count
_LUT_PIXELS_FACTOR = 4
_LUT_MIN = 1 << 16


def relabel_consecutive(labels: np.ndarray, dtype=None) -> np.ndarray:
    """Map the non-zero ids of a label image to ``1..N`` in increasing order (0 stays 0).

    Parameters
    ----------
    labels : ndarray of non-negative int (or bool)
        Label image of any shape.
    dtype : numpy dtype or None
        Output dtype (default: that of ``labels``).

    Returns
    -------
    ndarray
        Same shape; the ``k``-th smallest non-zero id becomes ``k``.

    Examples
    --------
    >>> relabel_consecutive(np.array([[0, 7, 7], [3, 0, 12]], dtype=np.uint16))
    array([[0, 2, 2],
           [1, 0, 3]], dtype=uint16)
    """
    labels = np.asarray(labels)
    dtype = labels.dtype if dtype is None else np.dtype(dtype)
    if labels.dtype.kind == "b" or labels.size == 0:
        return labels.astype(dtype, copy=True)
    flat = labels.ravel()
    max_id = int(flat.max())
    if max_id <= max(_LUT_PIXELS_FACTOR * flat.size, _LUT_MIN):
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat, minlength=max_id + 1) > 0
        present[0] = False
        lut = np.cumsum(present, dtype=np.int64)  # old id -> number of used ids <= it
        return lut[flat].astype(dtype).reshape(labels.shape)
    ids, inverse = np.unique(flat, return_inverse=True)
    new_ids = np.arange(ids.size, dtype=np.int64) + (0 if ids[0] == 0 else 1)
    return new_ids[inverse.ravel()].astype(dtype).reshape(labels.shape)


def instance_sizes(labels: np.ndarray, overlapping: bool = False) -> np.ndarray:
    """Pixel counts of the instances of a label image, or of an ``(N, ...)`` mask stack
    with ``overlapping=True`` (empty instances left out).

    >>> instance_sizes(np.array([[0, 1, 1], [2, 0, 1]])).tolist()
    [3, 1]
    """
    labels = np.asarray(labels)
    if overlapping:
        sizes = labels.reshape(len(labels), -1).sum(axis=1) if len(labels) else np.zeros(0)
    else:
        sizes = np.bincount(labels.ravel().astype(np.int64))[1:]
    return np.asarray(sizes[sizes > 0], np.int64)


def instance_widths(labels: np.ndarray, overlapping: bool = False) -> np.ndarray:
    """Mean width of each instance of a label image (or ``(N, ...)`` mask stack with
    ``overlapping=True``; empty instances left out): ``2 * (ndim - 1) * size / boundary``,
    where ``boundary`` counts the instance's pixels with a face neighbour outside it (the
    image border counts as outside). For a long band of width ``w`` it gives about ``w``
    (2D; a long tube's diameter in 3D) whatever its length: the size of worm-like objects,
    which their equivalent diameter is not.

    >>> band = np.zeros((6, 40), int); band[1:5, :] = 1
    >>> instance_widths(band).round(2).tolist()
    [3.81]
    """
    labels = np.asarray(labels)
    stack = labels if overlapping else labels[None]
    ndim = stack.ndim - 1
    padded = np.pad(stack, [(0, 0)] + [(1, 1)] * ndim)
    centre = padded[(slice(None),) + (slice(1, -1),) * ndim]
    interior = np.ones(centre.shape, bool)
    for axis in range(1, ndim + 1):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[(slice(None),) +
                                                          (slice(1, -1),) * ndim] == centre
    boundary = (centre != 0) & ~interior
    if overlapping:
        flat = stack.reshape(len(stack), -1)
        sizes = flat.sum(axis=1)
        edges = boundary.reshape(len(stack), -1).sum(axis=1)
    else:
        ids = labels.ravel().astype(np.int64)
        sizes = np.bincount(ids)[1:]
        edges = np.bincount(ids, weights=boundary.ravel(), minlength=ids.max() + 1)[1:]
    keep = sizes > 0
    return 2.0 * (ndim - 1) * sizes[keep] / np.maximum(edges[keep], 1)


def equivalent_diameter(size: float, ndim: int) -> float:
    """Diameter of the circle (2D) or sphere (3D) of ``size`` pixels.

    >>> round(equivalent_diameter(math.pi * 25, 2), 6), round(equivalent_diameter(4 / 3 * math.pi * 8, 3), 6)
    (10.0, 4.0)
    """
    if ndim == 2:
        return 2.0 * math.sqrt(size / math.pi)
    return 2.0 * (3.0 * size / (4.0 * math.pi)) ** (1 / 3)


def median_object_size(labels: np.ndarray, overlapping: bool = False,
                       measure: str = "diameter", min_count: int = 1) -> float | None:
    """Median size of the instances in pixels: their equivalent diameter
    (:func:`median_object_diameter`), or with ``measure="width"`` their width
    (:func:`instance_widths`, for worm-like objects); None with fewer than ``min_count``."""
    labels = np.asarray(labels)
    ndim = labels.ndim - 1 if overlapping else labels.ndim
    if measure == "width":
        widths = instance_widths(labels, overlapping)
        return float(np.median(widths)) if len(widths) >= max(min_count, 1) else None
    if measure != "diameter":
        raise ValueError(f"measure must be 'diameter' or 'width', got {measure!r}")
    return median_object_diameter(instance_sizes(labels, overlapping), ndim, min_count)


def median_object_diameter(sizes, ndim: int, min_count: int = 1) -> float | None:
    """:func:`equivalent_diameter` of the median of ``sizes``; None with fewer than
    ``min_count`` sizes."""
    sizes = np.asarray(sizes)
    if len(sizes) < max(min_count, 1):
        return None
    return equivalent_diameter(float(np.median(sizes)), ndim)
