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


def equivalent_diameter(size: float, ndim: int) -> float:
    """Diameter of the circle (2D) or sphere (3D) of ``size`` pixels.

    >>> round(equivalent_diameter(math.pi * 25, 2), 6), round(equivalent_diameter(4 / 3 * math.pi * 8, 3), 6)
    (10.0, 4.0)
    """
    if ndim == 2:
        return 2.0 * math.sqrt(size / math.pi)
    return 2.0 * (3.0 * size / (4.0 * math.pi)) ** (1 / 3)


def median_object_diameter(sizes, ndim: int, min_count: int = 1) -> float | None:
    """:func:`equivalent_diameter` of the median of ``sizes``; None with fewer than
    ``min_count`` sizes."""
    sizes = np.asarray(sizes)
    if len(sizes) < max(min_count, 1):
        return None
    return equivalent_diameter(float(np.median(sizes)), ndim)
