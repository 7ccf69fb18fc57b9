"""Blockwise assembly for images too large to assemble at once.

The image is cut into blocks; each block is assembled together with a margin of two patch
sizes on every side (so that the patches around the block border see their whole context),
and the block results are stitched: an instance of a block is kept if it has a pixel in
the block's core, and it takes the id of an instance already written when the two overlap
by at least ``merge_overlap`` of the smaller one (an instance cut by a block's edge is
smaller there than where it was seen whole), else a new id. Only one block's arrays are
in memory at a time; ``numinst`` and ``patches`` may be memory-mapped (``np.load(...,
mmap_mode="r")``) or any array that supports slicing, so the memory needed grows with the
block size, not with the image.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence

import numpy as np

from .assembly import assemble, resolve_device
from .candidates import CandidatePatches
from .labels import relabel_consecutive
from .params import AssemblyParams


def _blocks(shape: Sequence[int], block: Sequence[int], margin: Sequence[int]):
    """Yield (core slices, crop slices) covering ``shape``."""
    starts = [range(0, s, b) for s, b in zip(shape, block)]
    for corner in itertools.product(*starts):
        core = tuple(slice(c, min(c + b, s)) for c, b, s in zip(corner, block, shape))
        crop = tuple(slice(max(c.start - m, 0), min(c.stop + m, s))
                     for c, m, s in zip(core, margin, shape))
        yield core, crop


def assemble_blockwise(numinst, patches, params: AssemblyParams, *,
                       block_shape: Optional[Sequence[int]] = None,
                       merge_overlap: float = 0.5,
                       progress: Optional[Callable[[int, int], None]] = None,
                       device: str = "auto") -> np.ndarray:
    """Assemble instances block by block and stitch them into one label image.

    Parameters
    ----------
    numinst : array-like (3, [Z,] Y, X) or None
    patches : array-like (P, [Z,] Y, X)
        As for :func:`~ppp_zoo.postprocess.assemble`; may be memory-mapped.
    params : AssemblyParams
        ``overlapping`` must be False (label images only).
    block_shape : sequence of int, optional
        Core size of a block per spatial axis (default 256 in 2D, 64 in 3D).
    merge_overlap : float
        A block instance and a written one are the same instance when their intersection
        is at least this fraction of the smaller of the two.
    progress : callable, optional
        Called with (blocks done, blocks total).
    device : {"auto", "cpu", "cuda"}
        Where each block's assembly kernels run (see :func:`~ppp_zoo.postprocess.assemble`).

    Returns
    -------
    labels : ndarray of int32, shape ([Z,] Y, X)

    Examples
    --------
    >>> import numpy as np
    >>> from ppp_zoo.data.targets import instance_targets
    >>> labels = np.zeros((40, 60), np.int32)
    >>> labels[5:20, 5:50] = 1; labels[20:35, 10:30] = 2
    >>> numinst, patches = instance_targets(labels, (9, 9))
    >>> out = assemble_blockwise(numinst, patches, AssemblyParams(patchshape=(9, 9)),
    ...                          block_shape=(16, 16))
    >>> int(out.max()), bool(((out > 0) == (labels > 0)).all())
    (2, True)
    """
    if params.overlapping:
        raise ValueError("blockwise assembly writes label images: use overlapping=False")
    resolve_device(device)  # an unknown device, or cuda without a GPU, fails before any block
    spatial = tuple(patches.shape[1:])
    if len(spatial) != params.ndim:
        raise ValueError(f"patches must have shape (P, {'Z, ' if params.ndim == 3 else ''}Y, X) "
                         f"for patchshape {params.patchshape}, got {patches.shape}")
    if block_shape is None:
        block_shape = (256,) * 2 if params.ndim == 2 else (64,) * 3
    block_shape = tuple(int(b) for b in block_shape)
    if len(block_shape) != params.ndim or min(block_shape) < 1:
        raise ValueError(f"block_shape must have {params.ndim} positive entries, got {block_shape}")
    margin = tuple(2 * p for p in params.patchshape)
    out = np.zeros(spatial, np.int32)
    next_id = 1
    blocks = list(_blocks(spatial, block_shape, margin))
    for done, (core, crop) in enumerate(blocks):
        n_crop = None if numinst is None else np.ascontiguousarray(numinst[(slice(None),) + crop])
        p_crop = patches[(slice(None),) + crop]
        if not isinstance(p_crop, CandidatePatches):  # compact ones are float32 already
            p_crop = np.ascontiguousarray(p_crop, dtype=np.float32)
        local = assemble(n_crop, p_crop, params, device=device)
        del p_crop
        next_id = _stitch(out, local, core, crop, next_id, merge_overlap)
        if progress is not None:
            progress(done + 1, len(blocks))
    return relabel_consecutive(out, np.int32)


def _stitch(out, local, core, crop, next_id: int, merge_overlap: float) -> int:
    """Write the block's instances that reach into its core; merge with existing ones."""
    view = out[crop]
    inner = tuple(slice(c.start - k.start, c.stop - k.start) for c, k in zip(core, crop))
    in_core = np.unique(local[inner])
    in_core = in_core[in_core > 0]
    if in_core.size == 0:
        return next_id
    n_local = int(local.max())
    # joint histogram of (local id, existing id) over the crop
    existing_ids, existing = np.unique(view, return_inverse=True)
    existing = existing.reshape(view.shape)
    joint = np.bincount(local.ravel() * len(existing_ids) + existing.ravel(),
                        minlength=(n_local + 1) * len(existing_ids))
    joint = joint.reshape(n_local + 1, len(existing_ids))
    size_local = joint.sum(axis=1)
    size_existing = joint.sum(axis=0)
    mapping = np.zeros(n_local + 1, np.int32)
    for i in in_core:
        row = joint[i].copy()
        if existing_ids[0] == 0:
            row[0] = 0
        j = int(np.argmax(row))
        inter = row[j]
        smaller = min(size_local[i], size_existing[j])
        if inter > 0 and existing_ids[j] != 0 and inter >= merge_overlap * smaller:
            mapping[i] = existing_ids[j]
        else:
            mapping[i] = next_id
            next_id += 1
    write = (view == 0) & (mapping[local] > 0)
    view[write] = mapping[local][write]
    return next_id
