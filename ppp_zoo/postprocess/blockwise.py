"""Blockwise assembly for images too large to assemble at once.

The image is cut into blocks by the one block geometry of :mod:`.blocks`; each block is
assembled on its core plus a pad (two patch sizes of context and a one-patch strip), writes
the instances that have a pixel in its core, and the blocks' instances are merged by the
one rule of :mod:`.blocks` (an overlap of at least ``merge_overlap`` of the smaller in the
strips between neighbours; connected components). The dask path runs the same steps as
tasks. Only one block's arrays are in memory at a time; ``numinst`` and ``patches`` may be
memory-mapped (``np.load(..., mmap_mode="r")``) or any array that supports slicing, so the
memory needed grows with the block size, not with the image (plus the int32 labels).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numba
import numpy as np

from . import _kernels as cpu_kernels
from ._threads import blocks_side_by_side
from .assembly import AssemblyResult, assemble, resolve_device
from .blocks import (
    FAST_ASSEMBLY_BLOCK,
    MERGE_OVERLAP,
    _local,
    block_grid,
    block_luts,
    even_blocks,
    label_block,
    mask_block,
    match_block,
    match_block_masks,
    merge_pairs,
)
from .candidates import CandidatePatches
from .errors import PostprocessError
from .params import AssemblyParams


def assemble_blockwise(numinst, patches, params: AssemblyParams, *,
                       block_shape: Optional[Sequence[int]] = None,
                       merge_overlap: float = MERGE_OVERLAP,
                       progress: Optional[Callable[[int, int], None]] = None,
                       device: str = "auto", return_result: bool = False):
    """Assemble instances block by block and stitch them into one label image.

    Parameters
    ----------
    numinst : array-like (3, [Z,] Y, X) or None
    patches : array-like (P, [Z,] Y, X)
        As for :func:`~ppp_zoo.postprocess.assemble`; may be memory-mapped.
    params : AssemblyParams
        With ``overlapping``, the result is the ``(N, [Z,] Y, X)`` mask stack: each block's
        masks are merged by the same rule, on the pixels of the masks.
    block_shape : sequence of int, optional
        Core size of a block per spatial axis (default: about 512 x 512 in 2D, 1024 x 1024
        in fast mode, 64^3 in 3D, cutting the image evenly; rounded up to the fast mode's
        stride).
    merge_overlap : float
        A block instance and a neighbour's are the same instance when their intersection
        is at least this fraction of the smaller of the two.
    progress : callable, optional
        Called with (blocks done, blocks total).
    device : {"auto", "cpu", "cuda"}
        Where each block's assembly kernels run (see :func:`~ppp_zoo.postprocess.assemble`).
    return_result : bool
        Return an :class:`~ppp_zoo.postprocess.AssemblyResult` (sizes and timings summed
        over the blocks; ``device`` where the kernels of the blocks with candidates ran)
        instead of the labels.

    Returns
    -------
    labels : ndarray of int32, shape ([Z,] Y, X)
        Ids ``1..N`` in order of the block (raster order) where an instance is first seen.

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
    resolve_device(device)  # an unknown device, or cuda without a GPU, fails before any block
    spatial = tuple(patches.shape[1:])
    if len(spatial) != params.ndim:
        raise PostprocessError(f"patches must have shape (P, {'Z, ' if params.ndim == 3 else ''}Y, X) "
                         f"for patchshape {params.patchshape}, got {patches.shape}")
    if block_shape is None and params.fast:
        block_shape = even_blocks(spatial, FAST_ASSEMBLY_BLOCK[params.ndim])
    grid, strip = block_grid(spatial, params.patchshape, block_shape,
                             align=params.grid)
    if params.overlapping:
        return _assemble_masks(numinst, patches, params, grid, strip, merge_overlap,
                               progress, device, return_result)
    local = np.zeros(spatial, np.int32)  # each core's local ids, then the global ids
    indices = grid.indices()
    firsts, results = [], []
    for index, result in zip(indices, _block_results(numinst, patches, params, grid, device,
                                                     progress)):
        results.append(result)
        n, core, strips = label_block(result.labels, grid, index, strip)
        local[grid.core(index)] = core
        firsts.append((n, strips))
    counts = np.array([n for n, _ in firsts], np.int64)
    pairs = [match_block(grid, index, n, strips, lambda region: local[region], merge_overlap)
             for index, (n, strips) in zip(indices, firsts)]
    ids = merge_pairs(counts, np.concatenate(pairs) if pairs else np.zeros((0, 4), np.int64))
    for index, lut in zip(indices, block_luts(counts, ids, np.int32)):
        core = grid.core(index)
        local[core] = lut[local[core]]
    return _summed(local, int(ids.max(initial=0)), results) if return_result else local


MAX_CONCURRENT_BLOCKS = 4
"""At most this many blocks are assembled at once (memory grows with it)."""


def _block_results(numinst, patches, params, grid, device, progress):
    """The :class:`AssemblyResult` of every block of ``grid``, in order of its indices.

    On the CPU, when numba's threading layer runs parallel kernels of several threads side
    by side (``omp``, ``tbb``), up to :data:`MAX_CONCURRENT_BLOCKS` blocks are assembled at
    once, numba's threads shared among them: the steps that run on one core (cover,
    partition, labelling and the numpy between them) then overlap, which they cannot within
    one block. The labels do not depend on it (the kernels give the same values on any number
    of threads).
    """
    indices = grid.indices()

    def run(index):
        n_crop, p_crop = _crops(numinst, patches, grid, index)
        return assemble(n_crop, p_crop, params, device=device, return_result=True)

    def report(done):
        if progress is not None:
            progress(done, len(indices))

    threads = numba.get_num_threads()
    workers = min(threads, len(indices), MAX_CONCURRENT_BLOCKS)
    on_cpu = resolve_device(device) == "cpu"
    if workers > 1 and on_cpu:
        cpu_kernels.start_threads(np.zeros(workers, np.int64))  # numba chooses its layer
    if workers < 2 or not on_cpu or not blocks_side_by_side():
        for done, index in enumerate(indices, start=1):
            result = run(index)
            report(done)
            yield result
        return
    pool = ThreadPoolExecutor(workers, initializer=numba.set_num_threads,
                              initargs=(max(1, threads // workers),))
    try:
        for done, result in enumerate(pool.map(run, indices), start=1):
            report(done)  # may raise (a GUI cancelling): the blocks not started are dropped
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _crops(numinst, patches, grid, index):
    crop = grid.crop(index)
    n_crop = None if numinst is None else np.ascontiguousarray(numinst[(slice(None),) + crop])
    p_crop = patches[(slice(None),) + crop]
    if not isinstance(p_crop, CandidatePatches):  # compact ones are float32 already
        p_crop = np.ascontiguousarray(p_crop, dtype=np.float32)
    return n_crop, p_crop


def _assemble_masks(numinst, patches, params, grid, strip, merge_overlap, progress, device,
                    return_result):
    """Overlapping instances block by block: each block's masks restricted to its core,
    merged across blocks by the same rule as labels; the result is the ``(N, ...)`` stack,
    each instance the union of its parts (blocks hold only their cores' parts meanwhile)."""
    indices = grid.indices()
    parts, firsts, results = {}, [], []
    for index, result in zip(indices, _block_results(numinst, patches, params, grid, device,
                                                     progress)):
        n, core_masks, strips = mask_block(result.labels, grid, index, strip)
        parts[index] = core_masks
        firsts.append((n, strips))
        results.append(result)

    def written(neighbour, region):
        local = _local(region, grid.core(neighbour))
        return [m[local] for m in parts[neighbour]]

    counts = np.array([n for n, _ in firsts], np.int64)
    pairs = [match_block_masks(grid, index, strips, written, merge_overlap)
             for index, (_, strips) in zip(indices, firsts)]
    ids = merge_pairs(counts, np.concatenate(pairs) if pairs else np.zeros((0, 4), np.int64))
    masks = np.zeros((int(ids.max(initial=0)),) + grid.shape, bool)
    for index, lut in zip(indices, block_luts(counts, ids, np.int64)):
        core = grid.core(index)
        for local, mask in enumerate(parts.pop(index), start=1):
            masks[(lut[local] - 1,) + core] |= mask
    return _summed(masks, len(masks), results) if return_result else masks


def _summed(labels, n_instances: int, results: list) -> AssemblyResult:
    """The blocks' results as one: sizes and timings summed; the device where the kernels
    of the blocks with candidates ran (``"cuda+cpu"`` when they differ)."""
    devices = {r.device for r in results if r.n_candidates} or {"cpu"}
    timings: dict[str, float] = {}
    for r in results:
        for key, value in r.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    return AssemblyResult(labels, n_instances, sum(r.n_candidates for r in results),
                          sum(r.n_selected for r in results), sum(r.n_edges for r in results),
                          timings, devices.pop() if len(devices) == 1 else "cuda+cpu")
