"""The one block geometry and merge rule of every blockwise assembly.

An image too large to assemble at once is cut into blocks. ``segment`` (images above its
size limit, or ``--block``), :func:`~ppp_zoo.postprocess.assemble_blockwise` and the
dask / OME-Zarr path (:mod:`ppp_zoo.runtime.distributed`, one task per block) all use what
is defined here, so they differ only in who runs the blocks:

- **Geometry** (:class:`BlockGrid`, :func:`block_grid`): cores of ``block`` pixels tile the
  image; each block is assembled on its core plus a ``pad`` on every side: the assembly's
  context (two patch sizes, so that the patches near the core see all of theirs), a
  ``strip`` of one patch size compared with each neighbour, and, for blocks that also run
  the network, its halo. Cores and pads are rounded up to ``align`` (the fast mode's
  voting stride; the network's step), so every block votes with the centres the whole
  image would.
- **Owner**: a block writes only its core, and keeps the instances that have a pixel there
  (:func:`label_block`; :func:`mask_block` for overlapping instances, whose masks may share
  pixels); an instance that reaches into several cores is written by each.
- **Merge rule** (:func:`match_block`, :func:`merge_pairs`): what a block assembled in the
  strip around its core is compared with what each neighbour wrote there; two instances
  are one when their overlap is at least :data:`MERGE_OVERLAP` of the smaller, and every
  such pair is merged (connected components), so an instance spread over many blocks gets
  one id, however large it is. Ids are numbered ``1..N`` in order of their first block and
  local id.

The steps take and return plain arrays, so the same functions run block after block in
one process (:func:`~ppp_zoo.postprocess.assemble_blockwise`) or as dask tasks that read
and write zarr.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from .errors import PostprocessError

MERGE_OVERLAP = 0.5
"""Two block instances are one when they overlap by this fraction of the smaller."""
ASSEMBLY_BLOCK = {2: (512, 512), 3: (64, 64, 64)}
"""About the core size of an assembly block (the image is cut into equal blocks near this
size, :func:`even_blocks`). Larger blocks waste less on their pads (a 512 x 512 block with
17 x 17 patches reads 1.4x its core's pixels) while memory still follows the block."""
FAST_ASSEMBLY_BLOCK = {2: (1024, 1024), 3: (64, 64, 64)}
"""The same in fast mode, whose consensus takes about ``fast_stride ** (2 * ndim)`` times
less memory: a 2D block can be four times larger and waste less on its pads."""
TASK_BLOCK = {2: (1024, 1024), 3: (64, 256, 256)}
"""Default core of a dask task that runs the network as well: its pad adds the network's
halo, so larger blocks waste less of the network's work."""


@dataclasses.dataclass(frozen=True)
class BlockGrid:
    """Cores of ``block`` over ``shape``, and the ``pad`` read around each.

    >>> g = BlockGrid((100, 70), (40, 40), (5, 5))
    >>> g.grid, g.core((1, 1)), g.crop((1, 1))
    ((3, 2), (slice(40, 80, None), slice(40, 70, None)), (slice(35, 85, None), slice(35, 70, None)))
    """

    shape: tuple[int, ...]
    block: tuple[int, ...]
    pad: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block))

    def indices(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(g) for g in self.grid)))

    def flat(self, index: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(index), self.grid))

    def core(self, index) -> tuple[slice, ...]:
        return tuple(slice(i * b, min((i + 1) * b, s))
                     for i, b, s in zip(index, self.block, self.shape))

    def crop(self, index, extra: Sequence[int] | None = None) -> tuple[slice, ...]:
        """The core with ``extra`` (default: the pad) on every side, within the image."""
        pad = self.pad if extra is None else extra
        return tuple(slice(max(c.start - p, 0), min(c.stop + p, s))
                     for c, p, s in zip(self.core(index), pad, self.shape))

    def neighbours(self, index) -> list[tuple[int, ...]]:
        out = []
        for step in itertools.product((-1, 0, 1), repeat=len(index)):
            n = tuple(i + d for i, d in zip(index, step))
            if any(step) and all(0 <= k < g for k, g in zip(n, self.grid)):
                out.append(n)
        return out


def round_up(n: int, k: int) -> int:
    """``n`` rounded up to a multiple of ``k``."""
    return -(-int(n) // int(k)) * int(k)


def even_blocks(shape: Sequence[int], about: Sequence[int]) -> tuple[int, ...]:
    """Blocks of about ``about`` that cut ``shape`` into equal parts.

    >>> even_blocks((1184, 300), (512, 512))  # two of 592, not 512 + 512 + 160
    (592, 300)
    """
    return tuple(-(-int(s) // max(1, round(s / a))) for s, a in zip(shape, about))


def block_grid(shape: Sequence[int], patchshape: Sequence[int],
               block: Sequence[int] | None = None, *, halo: Sequence[int] | None = None,
               align: Sequence[int] | int = 1) -> tuple[BlockGrid, tuple[int, ...]]:
    """The grid of a blockwise assembly and the strip each block compares with its
    neighbours.

    Parameters
    ----------
    shape : sequence of int
        Space shape of the image.
    patchshape : sequence of int
        The assembly's patch shape: the strip is one patch, the context two.
    block : sequence of int, optional
        Core size (default: :data:`ASSEMBLY_BLOCK` cut evenly, :func:`even_blocks`).
    halo : sequence of int, optional
        Pixels the block's network needs on top (blocks that run the network).
    align : int or sequence of int
        Cores and pads are multiples of it (the fast mode's stride, the network's step).

    Raises
    ------
    ValueError
        A block with the wrong number of entries or a non-positive size.
    """
    ndim = len(shape)
    patch = tuple(int(p) for p in patchshape)
    halo = tuple(int(h) for h in (halo or (0,) * ndim))
    align = tuple([int(align)] * ndim if np.isscalar(align) else (int(a) for a in align))
    if block is None:
        block = even_blocks(shape, ASSEMBLY_BLOCK[ndim])
    block = tuple(int(b) for b in block)
    if len(block) != ndim or min(block) < 1:
        raise PostprocessError(f"block must have {ndim} positive sizes, got "
                         f"{'x'.join(map(str, block))}")
    block = tuple(round_up(b, a) for b, a in zip(block, align))
    strip = patch
    pad = tuple(round_up(h + 2 * p + s, a) for h, p, s, a in zip(halo, patch, strip, align))
    return BlockGrid(tuple(int(s) for s in shape), block, pad), strip


def _intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.start >= s.stop for s in out) else out


def _local(region: tuple[slice, ...], within: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, within))


def label_block(labels: np.ndarray, grid: BlockGrid, index: Sequence[int],
                strip: Sequence[int]) -> tuple[int, np.ndarray, dict]:
    """What one block contributes, from the labels it assembled on its crop.

    Returns
    -------
    n : int
        Instances the block owns (those with a pixel in its core), numbered ``1..n``.
    core : ndarray of uint32
        The block's core in those local ids (0: background or not owned).
    strips : dict
        Neighbour index -> (region, local ids the block assembled there): the part of the
        neighbour's core within ``strip`` of this core, for :func:`match_block`.
    """
    index = tuple(index)
    core, crop = grid.core(index), grid.crop(index)
    labels = np.asarray(labels)
    if labels.shape != tuple(s.stop - s.start for s in crop):
        raise PostprocessError(f"block labels of shape {labels.shape} for a block of "
                         f"{tuple(s.stop - s.start for s in crop)}")
    owned = np.unique(labels[_local(core, crop)])
    owned = owned[owned > 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint32)
    lut[owned] = np.arange(1, owned.size + 1, dtype=np.uint32)
    seen = grid.crop(index, strip)
    strips = {}
    for n in grid.neighbours(index):
        region = _intersect(seen, grid.core(n))
        if region is not None:
            strips[n] = (region, lut[labels[_local(region, crop)]])
    return int(owned.size), lut[labels[_local(core, crop)]], strips


def match_block(grid: BlockGrid, index: Sequence[int], n: int, strips: dict,
                written: Callable[[tuple[slice, ...]], np.ndarray],
                merge_overlap: float = MERGE_OVERLAP) -> np.ndarray:
    """Pairs ``(block, local id, neighbour, its local id)`` that are one instance: what
    this block assembled in each strip against what the neighbour wrote there
    (``written(region)`` reads the local ids written so far), overlapping by at least
    ``merge_overlap`` of the smaller of the two."""
    pairs = []
    for neighbour, (region, seen) in strips.items():
        there = np.asarray(written(region)).ravel().astype(np.int64)
        seen = np.asarray(seen).ravel().astype(np.int64)
        both = (seen > 0) & (there > 0)
        if not both.any():
            continue
        a_size = np.bincount(seen, minlength=n + 1)
        b_size = np.bincount(there)
        key, inter = np.unique(seen[both] * len(b_size) + there[both], return_counts=True)
        a, b = key // len(b_size), key % len(b_size)
        keep = inter >= merge_overlap * np.minimum(a_size[a], b_size[b])
        if keep.any():
            rows = np.empty((int(keep.sum()), 4), np.int64)
            rows[:, 0], rows[:, 1] = grid.flat(index), a[keep]
            rows[:, 2], rows[:, 3] = grid.flat(neighbour), b[keep]
            pairs.append(rows)
    return np.concatenate(pairs) if pairs else np.zeros((0, 4), np.int64)


def mask_block(masks: np.ndarray, grid: BlockGrid, index: Sequence[int],
               strip: Sequence[int]) -> tuple[int, list[np.ndarray], dict]:
    """:func:`label_block` for overlapping instances: ``masks`` ``(n, *crop)`` are the
    block's instance masks. Returns the number it owns (a pixel in its core), their masks
    on the core (in order: local ids ``1..n``), and per neighbour ``(region, masks of the
    owned instances there)``."""
    index = tuple(index)
    core, crop = grid.core(index), grid.crop(index)
    masks = np.asarray(masks, bool)
    if masks.shape[1:] != tuple(s.stop - s.start for s in crop):
        raise ValueError(f"block masks of shape {masks.shape} for a block of "
                         f"{tuple(s.stop - s.start for s in crop)}")
    owned = [m for m in masks if m[_local(core, crop)].any()]
    seen = grid.crop(index, strip)
    strips = {}
    for n in grid.neighbours(index):
        region = _intersect(seen, grid.core(n))
        if region is not None:
            strips[n] = (region, [m[_local(region, crop)] for m in owned])
    return len(owned), [m[_local(core, crop)] for m in owned], strips


def match_block_masks(grid: BlockGrid, index: Sequence[int], strips: dict,
                      written: Callable[[tuple[int, ...], tuple[slice, ...]], list],
                      merge_overlap: float = MERGE_OVERLAP) -> np.ndarray:
    """:func:`match_block` for overlapping instances: ``written(neighbour, region)`` gives
    the masks the neighbour wrote in ``region`` (its local ids ``1..m`` in order).

    Instances may share pixels, so two that cross inside a strip overlap there too: a pair
    is one instance only when each is the other's largest overlap (and that overlap is at
    least ``merge_overlap`` of the smaller)."""
    pairs = []
    for neighbour, (region, seen) in strips.items():
        there = written(neighbour, region)
        if not seen or not there:
            continue
        inter = np.array([[np.count_nonzero(a & b) for b in there] for a in seen], np.int64)
        size_a = np.array([np.count_nonzero(a) for a in seen], np.int64)
        size_b = np.array([np.count_nonzero(b) for b in there], np.int64)
        best_b, best_a = inter.argmax(axis=1), inter.argmax(axis=0)
        for a, b in enumerate(best_b):
            overlap = inter[a, b]
            if overlap and best_a[b] == a and \
                    overlap >= merge_overlap * min(size_a[a], size_b[b]):
                pairs.append((grid.flat(index), a + 1, grid.flat(neighbour), int(b) + 1))
    return np.asarray(pairs, np.int64).reshape(-1, 4)


def merge_pairs(counts: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Union-find over the instances of all blocks: global id per (block, local id).

    Parameters
    ----------
    counts : ndarray of int, shape (B,)
        Instances written per block (flat block index).
    pairs : ndarray of int, shape (K, 4)
        ``(block, local id, other block, its local id)`` rows of instances that are one.

    Returns
    -------
    ids : ndarray of int64, shape (sum(counts),)
        Global id ``1..N`` of each block's instance ``k`` at ``offsets[block] + k - 1``,
        numbered in order of their first block and local id.

    Examples
    --------
    >>> merge_pairs(np.array([2, 2]), np.array([[0, 2, 1, 1]])).tolist()
    [1, 2, 2, 3]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 4)
    a = offsets[pairs[:, 0]] + pairs[:, 1] - 1
    b = offsets[pairs[:, 2]] + pairs[:, 3] - 1
    # undirected components on CSR: ~10x faster than weak components of the directed graph
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(total, total)).tocsr()
    _, comp = connected_components(graph, directed=False)
    # number the components by their smallest node
    first = np.full(comp.max() + 1, total, np.int64)
    np.minimum.at(first, comp, np.arange(total))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(1, len(first) + 1)
    return rank[comp]


def block_luts(counts: np.ndarray, ids: np.ndarray, dtype=np.uint32) -> list[np.ndarray]:
    """Per block (flat order), the table from its local ids to the global ids."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return [np.concatenate([[0], ids[offsets[k]:offsets[k + 1]]]).astype(dtype)
            for k in range(len(counts))]


__all__ = ["ASSEMBLY_BLOCK", "FAST_ASSEMBLY_BLOCK", "MERGE_OVERLAP", "TASK_BLOCK", "BlockGrid", "block_grid",
           "block_luts", "even_blocks", "label_block", "mask_block", "match_block",
           "match_block_masks", "merge_pairs", "round_up"]
