"""Ground-truth targets: the ideal network output for a label image or a mask stack.

``numinst`` (3, [Z,] Y, X) one-hot of the number of instances at each pixel (0, 1, 2+) and
``patches`` (P, [Z,] Y, X) with P = prod(patchshape): channel ``k`` at pixel ``x`` is 1 iff
``x`` and ``x + o_k`` (``o_k = unravel_index(k, patchshape) - patchshape // 2``) both lie in
the same instance. With a mask stack, "same instance" means sharing at least one instance,
and overlap pixels (2+ instances) get the same rule. Pixels outside the image count as
background.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..postprocess.params import parse_shape


def _validate_targets_input(labels: np.ndarray, patchshape, overlapping: bool):
    labels = np.asarray(labels)
    patchshape = parse_shape(patchshape)
    spatial = labels.shape[1:] if overlapping else labels.shape
    if len(spatial) != len(patchshape):
        what = "(N, [Z,] Y, X) mask stack" if overlapping else "([Z,] Y, X) label image"
        raise UserError(
            f"expected a {what} matching the {len(patchshape)}D patchshape {patchshape}, "
            f"got shape {labels.shape}"
        )
    if any(p % 2 == 0 or p < 1 for p in patchshape):
        raise UserError(f"patchshape entries must be odd and positive, got {patchshape}")
    if labels.dtype.kind not in "biu":
        raise UserError(f"labels must be an integer or boolean array, got dtype {labels.dtype}")
    if labels.size and labels.dtype.kind == "i" and labels.min() < 0:
        raise UserError("labels must be non-negative")
    return labels, patchshape


def _shift(arr: np.ndarray, offset) -> np.ndarray:
    """``out[x] = arr[x + offset]`` over the last len(offset) axes, 0 outside."""
    out = np.zeros_like(arr)
    lead = arr.ndim - len(offset)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for o, n in zip(offset, arr.shape[lead:]):
        if o >= 0:
            src.append(slice(o, n))
            dst.append(slice(0, max(n - o, 0)))
        else:
            src.append(slice(0, max(n + o, 0)))
            dst.append(slice(-o, n))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def instance_targets(labels, patchshape, *, overlapping: bool = False, dtype=np.float32):
    """Numinst one-hot and GT patches for a label image or a stack of instance masks.

    Parameters
    ----------
    labels : ndarray
        Label image ([Z,] Y, X) (0 = background), or with ``overlapping=True`` a stack of
        binary instance masks (N, [Z,] Y, X).
    patchshape : tuple of int or str
        Odd patch shape, e.g. ``(25, 25)`` or ``"9x9x9"``.
    overlapping : bool
        Interpret ``labels`` as a mask stack.
    dtype : numpy dtype
        Output dtype (float32 is what the network outputs).

    Returns
    -------
    numinst : ndarray (3, [Z,] Y, X)
    patches : ndarray (prod(patchshape), [Z,] Y, X)

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((5, 5), int); lab[1:4, 1:3] = 1; lab[1:4, 3] = 2
    >>> numinst, patches = instance_targets(lab, (3, 3))
    >>> patches.shape, int(numinst[1].sum())
    ((9, 5, 5), 9)
    >>> int(patches[5, 2, 1]), int(patches[5, 2, 2])  # right neighbour: same / other instance
    (1, 0)
    """
    labels, patchshape = _validate_targets_input(labels, patchshape, overlapping)
    r = np.array(patchshape) // 2
    offsets = np.indices(patchshape).reshape(len(patchshape), -1).T - r
    if overlapping:
        masks = labels.astype(bool)
        count = masks.sum(axis=0)
        # one bit per instance, packed into uint64 words: "share an instance" = any common bit
        n_words = max(1, -(-masks.shape[0] // 64))
        words = np.zeros((n_words,) + masks.shape[1:], np.uint64)
        for i in range(masks.shape[0]):
            words[i // 64] |= masks[i].astype(np.uint64) << np.uint64(i % 64)
        patches = np.empty((len(offsets),) + masks.shape[1:], dtype)
        for k, o in enumerate(offsets):
            patches[k] = ((words & _shift(words, o)) != 0).any(axis=0)
    else:
        lab = labels.astype(np.int64)
        count = (lab > 0).astype(np.int64)
        patches = np.empty((len(offsets),) + lab.shape, dtype)
        for k, o in enumerate(offsets):
            patches[k] = (lab > 0) & (_shift(lab, o) == lab)
    numinst = np.stack([count == 0, count == 1, count >= 2]).astype(dtype)
    return numinst, patches
