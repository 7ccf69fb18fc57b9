"""Instance assembly by patch consensus (see the package docstring for the definitions).

The public entry point is :func:`assemble`. The step functions (``foreground_classes``,
``compute_consensus``, ``rank_patches``, ``cover_foreground``, ``patch_graph``,
``partition_graph``, ``label_instances``) are public too, so that each step can be inspected
and tested on its own.

Devices: ``compute_consensus``, ``cover_foreground`` and ``patch_graph`` run the numba CPU
kernels (``_kernels.py``) or, with ``device="cuda"``, numba CUDA kernels
(``_cuda_kernels.py``, imported when they are about to run) that give the same results; the
other steps always run on the CPU. :func:`assemble` takes ``device="auto"`` (the GPU when
numba finds a usable one and the CUDA kernels passed :func:`cuda_self_check` on it, else
the CPU), ``"cpu"`` or ``"cuda"``; :attr:`AssemblyResult.device` says where the kernels
really ran.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from functools import partial
from typing import Callable, Optional

import numpy as np

from . import _cuda_probe
from . import _kernels as cpu_kernels
from ._state import BAND_ROWS, Consensus, Prepared
from ._threads import parallel_section
from .candidates import CandidatePatches
from .errors import PostprocessError
from .foreground import candidate_mask, foreground_classes
from .labels import relabel_consecutive
from .params import AssemblyParams

ProgressCallback = Optional[Callable[[str], None]]

#: patch scores are rounded to this many decimals before ranking (float32 vote sums
#: differ in the last bits between mathematically equal scores)
SCORE_DECIMALS = 5


#: values of the ``device`` argument
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> str:
    """``"cpu"`` or ``"cuda"``: where the assembly kernels run for ``device``.

    ``"auto"`` is ``"cuda"`` when numba finds a CUDA GPU it can compile for and the CUDA
    kernels pass :func:`cuda_self_check` there (once per process), else ``"cpu"``.
    ``"cuda"`` takes the GPU without the self-check.

    Raises
    ------
    ValueError
        For a value other than ``"auto"``, ``"cpu"`` or ``"cuda"``.
    RuntimeError
        For ``"cuda"`` without a usable CUDA GPU (the message says what is missing).
    """
    if device not in DEVICES:
        raise PostprocessError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    reason = _cuda_probe.unavailable_reason()
    if reason is not None:
        if device == "auto":
            return "cpu"
        raise RuntimeError(f"device='cuda' cannot run: {reason}")
    if device == "cuda" or cuda_self_check() is None:
        return "cuda"
    return "cpu"


def cuda_self_check() -> str | None:
    """None when the CUDA kernels give the CPU kernels' results on a small assembly on this
    machine, else the first difference (or failure) found, in one sentence.

    The test assembly (:func:`_self_check_case`) runs steps 1-7 with the CPU and the CUDA
    kernels and compares every intermediate result: consensus bit for bit, scores and
    edge weights to 1e-12, |H_c|, ranking, cover, edges and labels exactly. It runs once per
    process and is remembered on disk per GPU, numba version and kernel source (see
    ``_cuda_probe.py``); ``device="auto"`` takes the GPU only when it passed. Needs a
    usable GPU (or numba's simulator).
    """
    return _cuda_probe.self_check(_run_self_check)


#: largest difference allowed between the CPU's and the GPU's float64 scores and weights
#: (sums of the same float32 values; the CPU compiler may reassociate them)
SELF_CHECK_TOLERANCE = 1e-12


def _self_check_case():
    """``(numinst, patches, params)`` of the self-check: a 16x16 image with four touching
    instances and noisy 5x5 patches (a fifth of the values anywhere in [0, 1)), fixed seed."""
    rng = np.random.default_rng(5021)
    labels = np.zeros((16, 16), np.int64)
    labels[1:7, 1:8] = 1
    labels[7:14, 2:9] = 2
    labels[3:12, 9:15] = 3
    labels[12:16, 10:16] = 4
    size, r = 5, 2
    outside = np.pad(labels, r, constant_values=-1)
    patches = np.empty((size * size, 16, 16), np.float32)
    for k, (dy, dx) in enumerate(np.ndindex(size, size)):
        same = (outside[dy:dy + 16, dx:dx + 16] == labels) & (labels > 0)
        patches[k] = np.where(same, rng.uniform(0.9, 1.0, same.shape),
                              rng.uniform(0.0, 0.1, same.shape))
    noise = rng.random(patches.shape) < 0.2
    patches[noise] = rng.random(int(noise.sum()))
    fg = labels > 0
    numinst = np.stack([np.where(fg, 0.05, 0.9), np.where(fg, 0.9, 0.05),
                        rng.uniform(0.0, 0.3, fg.shape)]).astype(np.float32)
    params = AssemblyParams(patchshape=(size, size), numinst_thresholds=(0.5, 0.4),
                            partition="mws")
    return numinst, patches, params


def _run_self_check() -> str | None:
    numinst, patches, params = _self_check_case()
    prep, cand = prepare(numinst, patches, params)
    differs = "the CUDA kernels' {} differ from the CPU kernels' on the test assembly".format
    c_cpu = compute_consensus(prep, cand, "cpu")
    c_gpu = compute_consensus(prep, cand, "cuda")
    if not np.array_equal(c_cpu.values.view(np.int32), c_gpu.values.view(np.int32)):
        return differs("consensus values")
    if not np.array_equal(c_cpu.n_high, c_gpu.n_high) or \
            not np.abs(c_cpu.scores - c_gpu.scores).max(initial=0) <= SELF_CHECK_TOLERANCE:
        return differs("patch scores")
    ranked, _ = rank_patches(cand, c_cpu)
    if not np.array_equal(ranked, rank_patches(cand, c_gpu)[0]):
        return differs("patch rankings")
    s_cpu = cover_foreground(prep, ranked, "cpu")
    s_gpu = cover_foreground(prep, ranked, "cuda")
    if not np.array_equal(s_cpu, s_gpu):
        return differs("foreground covers")
    e_cpu, w_cpu = patch_graph(prep, s_cpu, c_cpu, "cpu")
    e_gpu, w_gpu = patch_graph(prep, s_cpu, c_cpu, "cuda")
    if not np.array_equal(e_cpu, e_gpu) or \
            not np.abs(w_cpu - w_gpu).max(initial=0) <= SELF_CHECK_TOLERANCE:
        return differs("patch graphs")
    l_cpu = label_instances(prep, s_cpu, partition_graph(len(s_cpu), e_cpu, w_cpu,
                                                         params.partition))
    l_gpu = label_instances(prep, s_gpu, partition_graph(len(s_gpu), e_gpu, w_gpu,
                                                         params.partition))
    if not np.array_equal(l_cpu, l_gpu):
        return differs("labels")
    return None


def _cuda():
    from . import _cuda_kernels

    return _cuda_kernels


# --------------------------------------------------------------------------- validation
def _validate_inputs(numinst, patches, params: AssemblyParams):
    compact = isinstance(patches, CandidatePatches)
    if compact and numinst is None:
        raise PostprocessError("candidate patches need numinst (the foreground comes from it)")
    if not compact:
        patches = np.asarray(patches)
    if patches.ndim != params.ndim + 1:
        raise PostprocessError(
            f"patches must have shape (P, {'Z, ' if params.ndim == 3 else ''}Y, X) for a "
            f"{params.ndim}D patchshape {params.patchshape}, got shape {patches.shape}"
        )
    n_ch = int(np.prod(params.patchshape))
    if patches.shape[0] != n_ch:
        raise PostprocessError(
            f"patches has {patches.shape[0]} channels but patchshape "
            f"{'x'.join(map(str, params.patchshape))} needs {n_ch}"
        )
    if patches.dtype.kind not in "fiub":
        raise PostprocessError(f"patches must be numeric, got dtype {patches.dtype}")
    if min(patches.shape[1:], default=0) < 1:
        raise PostprocessError(f"patches has an empty spatial shape {patches.shape[1:]}")
    if numinst is not None:
        numinst = np.asarray(numinst)
        if numinst.shape != (3,) + patches.shape[1:]:
            raise PostprocessError(
                f"numinst must have shape {(3,) + patches.shape[1:]} (3 classes over the "
                f"patches' spatial shape), got {numinst.shape}"
            )
        if numinst.dtype.kind not in "fiub":
            raise PostprocessError(f"numinst must be numeric, got dtype {numinst.dtype}")
        if not np.isfinite(numinst).all():
            raise PostprocessError("numinst contains NaN or infinite values")
    # Checked in chunks so that a float64 copy of a large array is never made.
    flat = patches.values if compact else patches.reshape(patches.shape[0], -1)
    step = max(1, (1 << 24) // max(1, flat.shape[1]))
    for i in range(0, flat.shape[0], step):
        if not np.isfinite(flat[i:i + step]).all():
            raise PostprocessError("patches contains NaN or infinite values")
    return numinst, patches


# --------------------------------------------------------------------------- steps
def prepare(numinst, patches, params: AssemblyParams) -> tuple[Prepared, np.ndarray]:
    """Validate the inputs and build the state of the steps: ``(Prepared, candidates)``,
    the candidates being the flat indices of the candidate centres (step 0).

    The steps :func:`compute_consensus`, :func:`rank_patches`, :func:`cover_foreground`,
    :func:`patch_graph`, :func:`partition_graph` and :func:`label_instances` then run in
    that order, as :func:`assemble` runs them.
    """
    numinst, patches = _validate_inputs(numinst, patches, params)
    if not isinstance(patches, CandidatePatches):
        patches = np.ascontiguousarray(patches, dtype=np.float32)
    cls = foreground_classes(numinst, patches, params)
    cand_flat = np.flatnonzero(candidate_mask(cls, params)).astype(np.int64)
    prep = Prepared(patches, cls, params)
    prep.columns_of(cand_flat)  # candidate patches: every candidate must have its patch
    return prep, cand_flat


def _share_bands(prep: Prepared, cand_mask: np.ndarray, bands: np.ndarray,
                 n_workers: int) -> np.ndarray:
    """The first band of each worker of the consensus pass, plus the number of bands:
    consecutive bands (a worker reuses the centre rows it loaded for the previous band)
    with about equal work each, the work of a row being its (pixel, centre) pairs. The
    values do not depend on the split."""
    if n_workers == 1:
        return np.array([0, len(bands) - 1], np.int64)
    work = np.cumsum(np.add.reduceat(cpu_kernels.row_work(prep.vidx, cand_mask.view(np.uint8), prep.r),
                                     bands[:-1]))
    cut = np.searchsorted(work, work[-1] * np.arange(1, n_workers) / n_workers) + 1
    return np.concatenate([[0], np.minimum(cut, len(bands) - 1), [len(bands) - 1]]).astype(np.int64)


def compute_consensus(prep: Prepared, cand_flat: np.ndarray, device: str = "cpu") -> Consensus:
    """Steps 1-2: accumulate every candidate's votes, then score every candidate patch
    (on the GPU with ``device="cuda"``; same values, see ``_cuda_kernels``).

    In fast mode the votes, the consensus and the scores are those of the pixels on the
    stride grid (:meth:`Prepared.on_grid`)."""
    if prep.stride > 1:
        grid, grid_cand = prep.on_grid(cand_flat)
        consensus = compute_consensus(grid, grid_cand, device)
        return dataclasses.replace(consensus, stride=prep.stride, image_shape=prep.geo.shape)
    if resolve_device(device) == "cuda":
        if _cuda().cpu_vote_rounding() is not None:
            return _cuda().compute_consensus(prep, cand_flat)
        warnings.warn("the CPU vote kernel rounds its expressions inconsistently on this "
                      "machine, so the GPU cannot reproduce its consensus: consensus and "
                      "scores run on the CPU", RuntimeWarning, stacklevel=2)
    geo = prep.geo
    n_cols = geo.n_columns
    if int(np.prod(geo.patchshape)) > np.iinfo(np.uint16).max:
        raise PostprocessError(f"patchshape {geo.patchshape} is too large (at most 65535 offsets)")
    Z, Y, X = geo.shape
    ry = int(geo.r[1])
    cand_flat = np.ascontiguousarray(cand_flat, np.int64)
    centres = prep.centres_of(cand_flat)  # raster order: sorted by (z, y, x)
    order = np.argsort(centres[:, 1], kind="stable")  # by (y, z, x)
    by_row = np.ascontiguousarray(centres[order])
    row_start = np.searchsorted(by_row[:, 1], np.arange(Y + 1)).astype(np.int64)
    slot = np.full(geo.shape, -1, np.int32)
    slot[tuple(by_row.T)] = np.arange(len(by_row)) - row_start[by_row[:, 1]]
    max_row = max(int(np.diff(row_start).max()), 1)
    bands = np.append(np.arange(0, Y, BAND_ROWS), Y).astype(np.int64)
    slab_start = row_start[np.maximum(bands[:-1] - ry, 0)]
    slab_end = row_start[np.minimum(bands[1:] + ry, Y)]
    score_part = np.empty((len(bands) - 1, int((slab_end - slab_start).max())), np.float64)
    cons = np.empty((prep.n_voting, n_cols), np.float32)
    n_high = np.empty(len(by_row), np.int64)
    n_low = np.empty(len(by_row), np.int64)
    height = max(2 * ry, 1)  # stripes of the per-patch formulation: the order of the votes
    # each worker holds a ring of pitched patches; together they stay within the memory of
    # a vote count per consensus entry, which the row-by-row pass does not need
    pitched = int(np.prod(geo.patchshape[:2])) * int(prep.fshape[2])  # one pitched patch
    ring_bytes = (2 * ry + 1) * max_row * pitched * 5  # float32 values + int8 classes
    budget = max(prep.n_voting * n_cols * 2, ring_bytes)
    n_workers = max(1, min(cpu_kernels.n_threads(), len(bands) - 1, budget // ring_bytes))
    workers = _share_bands(prep, slot >= 0, bands, n_workers)
    cpu_kernels.consensus_rows(prep.patches, by_row, prep.columns_of(cand_flat[order]), row_start,
                     slot, bands, workers, slab_start, max_row, prep.offs, prep.r,
                     prep.pshape, prep.fshape, n_cols, prep.vmask, prep.vidx, prep.th, prep.bg,
                     height, cons, score_part, n_high, n_low)
    scores_by_row = np.empty(len(by_row), np.float64)
    cpu_kernels.finish_scores(score_part, slab_start, slab_end, n_high, n_low, scores_by_row)
    scores = np.empty(len(cand_flat), np.float64)
    scores[order] = scores_by_row
    high = np.empty(len(cand_flat), np.int64)
    high[order] = n_high
    return Consensus(cons, prep.vidx, geo, scores, high)


def rank_patches(cand_flat: np.ndarray, consensus: Consensus):
    """Step 2: order the candidates best first; returns (flat centres, rounded scores).

    Scores are rounded to ``SCORE_DECIMALS`` decimals first, so that values equal up to
    float32 rounding tie; ties go to the larger H_c, then to a fixed pseudo-random order
    (raster order would pick a run of near-identical neighbours).
    """
    scores = np.round(consensus.scores, SCORE_DECIMALS)
    order = np.lexsort((cand_flat, _tie_key(cand_flat), -consensus.n_high, -scores))
    return cand_flat[order], scores[order]


def _tie_key(flat: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random key per pixel index (the splitmix64 finaliser)."""
    z = flat.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def cover_foreground(prep: Prepared, ranked_flat: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Step 3: greedy foreground cover; returns the flat centres of the selected patches.

    Fast mode covers in two passes: first the foreground on the stride grid (the grid
    problem's cover), then, with what those patches cover marked, the pixels between the
    grid, by the other patches in rank order. The selection stays in rank order."""
    if prep.stride > 1:
        grid, grid_ranked = prep.on_grid(ranked_flat)
        first = _cover_positions(grid, grid_ranked, device)
        covered = np.zeros_like(prep.fgmask)
        _cover_positions(prep, ranked_flat[first], device, covered)
        return ranked_flat[np.union1d(first, _first_covering(prep, ranked_flat, covered))]
    return ranked_flat[_cover_positions(prep, ranked_flat, device)]


def _first_covering(prep: Prepared, ranked_flat: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """The greedy cover's second pass, pixel by pixel: the positions (into ``ranked_flat``)
    of the best-ranked patch holding each foreground pixel that ``covered`` lacks.

    The same selection as walking the ranking again from ``covered``: the best-ranked
    patch holding an uncovered pixel u finds u still uncovered at its turn (a patch
    selected before it would hold u and rank better), and a patch selected on that walk
    was chosen for a pixel that no better-ranked patch holds."""
    geo = prep.geo
    s = prep.stride
    rank_at = np.full(geo.padded_shape, -1, np.int64)
    centres = prep.centres_of(ranked_flat)
    rank_at[tuple((centres + prep.r).T)] = np.arange(len(ranked_flat))
    pixels = np.ascontiguousarray(np.argwhere(geo.unpad((prep.fgmask != 0) & (covered == 0))
                                              .reshape(geo.shape)), np.int64)
    residue = ((prep.offs[:, 0] % s) * s + prep.offs[:, 1] % s) * s + prep.offs[:, 2] % s
    members = [np.flatnonzero(residue == g) for g in range(s ** 3)]
    groups = np.full((s ** 3, max(len(m) for m in members)), -1, np.int64)
    for g, m in enumerate(members):
        groups[g, :len(m)] = m
    best = np.empty(len(pixels), np.int64)
    cpu_kernels.first_covering(prep.patches, prep.columns_of(ranked_flat), rank_at, pixels,
                               prep.offs, groups, prep.r, np.int64(s),
                               np.float32(prep.params.fc_threshold), best)
    return np.unique(best[best >= 0])


def _cover_positions(prep: Prepared, ranked_flat: np.ndarray, device: str,
                     covered: np.ndarray | None = None) -> np.ndarray:
    """Positions (into ``ranked_flat``) of the patches the greedy cover selects, starting
    from the padded ``covered`` mask (updated; empty when not given)."""
    if covered is None:
        if resolve_device(device) == "cuda":
            return _cuda().cover_foreground(prep, ranked_flat)
        covered = np.zeros_like(prep.fgmask)
    centres = prep.centres_of(ranked_flat)
    selected = np.empty(len(ranked_flat), np.int64)
    m = cpu_kernels.foreground_cover(prep.patches, centres, prep.columns_of(ranked_flat),
                           prep.offs, prep.r, prep.fgmask,
                           np.float32(prep.params.fc_threshold), covered, selected)
    return selected[:m]


def patch_graph(prep: Prepared, selected_flat: np.ndarray, consensus: Consensus,
                device: str = "cpu"):
    """Steps 4-5: candidate edges between selected patches and their consensus weights.

    Returns ``(edges, weights)``: (E, 2) int64 node indices (a < b, into ``selected_flat``)
    and (E,) float64 weights; pairs without any defined consensus are dropped.
    """
    if prep.stride > 1:  # fast mode: the patches' H sets and the consensus on the grid
        if consensus.stride != prep.stride:
            raise PostprocessError("fast mode: the consensus must come from compute_consensus "
                                   "with the same parameters")
        grid, grid_selected = prep.on_grid(selected_flat)
        return patch_graph(grid, grid_selected, consensus, device)
    on_gpu = resolve_device(device) == "cuda"
    geo = prep.geo
    centres = prep.centres_of(selected_flat)
    n, P = len(selected_flat), prep.offs.shape[0]
    pz, py, px = geo.patchshape
    if on_gpu:
        cuda_kernels = _cuda()
        edges = cuda_kernels.candidate_edges(centres, geo.patchshape)
        hmask, hspan, d_centres = cuda_kernels.high_masks(prep, centres)
    else:
        edges = cpu_kernels.candidate_edges(centres, np.argsort(centres[:, 1], kind="stable"),
                                  np.array(geo.patchshape, np.int64))
        hmask = np.empty((n, P), np.uint8)
        hspan = np.empty((n, pz * py, 2), np.int64)
        cpu_kernels.high_masks(prep.patches, centres, prep.columns_of(selected_flat),
                     prep.offs, prep.r, prep.vmask, prep.th, hmask, hspan)
    # weight(a, b), a < b: half 0 sums u in H_a, v in H_b (v after u), computed in b's pass;
    # half 1 sums u in H_b, v in H_a, computed in a's pass
    E = len(edges)
    node = np.concatenate([edges[:, 1], edges[:, 0]])
    # a stable sort by node (a radix sort when the ids fit 16 bits)
    order = np.argsort(node.astype(np.uint16) if n <= 1 << 16 else node, kind="stable")
    nbr_node = np.ascontiguousarray(np.concatenate([edges[:, 0], edges[:, 1]])[order])
    nbr_slot = np.ascontiguousarray(np.concatenate([2 * np.arange(E), 2 * np.arange(E) + 1])[order])
    nbr_start = np.searchsorted(node[order], np.arange(n + 1)).astype(np.int64)
    part_sum = np.zeros(2 * E, np.float64)
    part_cnt = np.zeros(2 * E, np.int64)
    if on_gpu:
        if E:
            cuda_kernels.edge_weight_parts(prep, centres, hmask, hspan, d_centres, nbr_start, nbr_node,
                                 nbr_slot, consensus.values, part_sum, part_cnt)
    else:
        cpu_kernels.edge_weight_parts(centres, prep.offs, hmask, hspan, nbr_start, nbr_node, nbr_slot,
                            prep.vidx, prep.r, prep.fshape, geo.n_columns,
                            consensus.values, part_sum, part_cnt,
                            _visit_order(selected_flat))
    count = part_cnt[0::2] + part_cnt[1::2]
    keep = count > 0
    edges = edges[keep]
    weights = (part_sum[0::2] + part_sum[1::2])[keep] / count[keep]
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    return edges[order], weights[order]


def _visit_order(flat: np.ndarray, block: int = 32) -> np.ndarray:
    """Order in which the edge-weight pass visits the nodes: raster order, so that
    neighbouring nodes read the same consensus rows while they are in cache, in blocks of
    ``block`` nodes dealt round-robin to the threads (each thread takes a contiguous share
    of the loop), so that every thread gets parts of the whole image."""
    raster = np.argsort(flat, kind="stable")
    k = max(1, cpu_kernels.n_threads())
    blocks = np.arange(len(raster)) // block
    return np.ascontiguousarray(raster[np.lexsort((np.arange(len(raster)), blocks % k))])


def partition_graph(n_nodes: int, edges: np.ndarray, weights: np.ndarray, method: str) -> np.ndarray:
    """Step 6: component id (1..K, numbered by first node) of every node."""
    if method == "cc":
        roots = cpu_kernels.connected_components(n_nodes, np.asarray(edges, np.int64),
                                       np.asarray(weights, np.float64))
    elif method == "mws":
        roots = _mutex_watershed(n_nodes, edges, weights)
    else:
        raise PostprocessError(f"partition must be 'cc' or 'mws', got {method!r}")
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, len(first) + 1)
    return rank[inverse]


def _mutex_watershed(n_nodes: int, edges: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mutex watershed on a signed graph (edges sorted by |w| descending, ties by pair)."""
    edges = np.ascontiguousarray(edges, np.int64).reshape(-1, 2)
    weights = np.ascontiguousarray(weights, np.float64)
    key = -np.abs(weights)
    if len(edges) > 1 and not np.all((edges[1:, 0] > edges[:-1, 0]) | (
            (edges[1:, 0] == edges[:-1, 0]) & (edges[1:, 1] > edges[:-1, 1]))):
        order = np.lexsort((edges[:, 1], edges[:, 0], key))
    else:  # sorted by pair already (as patch_graph returns them): a stable sort suffices
        order = np.argsort(key, kind="stable")
    return cpu_kernels.mutex_watershed(n_nodes, edges, weights, order.astype(np.int64))


def label_instances(prep: Prepared, selected_flat: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """Step 7: paint the instances; label image, or (N, ...) bool masks when overlapping."""
    params = prep.params
    geo = prep.geo
    mask = prep.fgmask if params.crop_to_fg else np.ones_like(prep.fgmask)
    centres = prep.centres_of(selected_flat)
    cflat = prep.columns_of(selected_flat)  # the selected patches' columns
    n_comp = int(comp.max()) if comp.size else 0
    if params.overlapping:
        # one layer per component (at least two, so the kernel paints a stack)
        masks = np.zeros((max(n_comp, 2),) + geo.padded_shape, np.uint8)
        cpu_kernels.paint(prep.patches, centres, cflat, comp.astype(np.int64), prep.offs, prep.r,
                mask, prep.th, masks)
        masks = geo.unpad(masks[:n_comp]).astype(bool)
        sizes = masks.reshape(n_comp, -1).sum(axis=1)
        return masks[sizes >= max(params.min_size, 1)]
    labels = np.zeros((1,) + geo.padded_shape, np.int32)
    rev = slice(None, None, -1)  # worst-ranked first, so the best patches are painted last
    cpu_kernels.paint(prep.patches, np.ascontiguousarray(centres[rev]), np.ascontiguousarray(cflat[rev]),
            np.ascontiguousarray(comp[rev].astype(np.int64)), prep.offs, prep.r, mask,
            prep.th, labels)
    labels = np.ascontiguousarray(geo.unpad(labels[0]))
    return _remove_small_and_relabel(labels, params.min_size)


def _remove_small_and_relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(labels.reshape(-1))
    small = sizes < max(min_size, 1)
    small[0] = True
    return relabel_consecutive(np.where(small[labels], 0, labels), np.int32)


# --------------------------------------------------------------------------- public
@dataclasses.dataclass(frozen=True)
class AssemblyResult:
    """Output of :func:`assemble`.

    Attributes
    ----------
    labels : ndarray
        Label image ([Z,] Y, X) int32, or (N, [Z,] Y, X) bool masks in overlapping mode.
    n_instances : int
    n_candidates, n_selected, n_edges : int
        Sizes of the intermediate problems.
    timings : dict
        Seconds per step.
    device : str
        Where the consensus, cover and graph kernels really ran: ``"cpu"``, ``"cuda"``, or
        ``"cuda+cpu"`` when some of them ran on the CPU (``device="auto"`` fell back part
        way after a CUDA failure, or the consensus was computed on the CPU because the GPU
        cannot reproduce the CPU's rounding). ``"cpu"`` when no kernel ran (no candidate).
    """

    labels: np.ndarray
    n_instances: int
    n_candidates: int
    n_selected: int
    n_edges: int
    timings: dict
    device: str = "cpu"

    def summary(self) -> dict:
        return {
            "n_instances": self.n_instances,
            "n_candidates": self.n_candidates,
            "n_selected": self.n_selected,
            "n_edges": self.n_edges,
            "device": self.device,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def assemble(numinst, patches, params: AssemblyParams, *, progress: ProgressCallback = None,
             return_result: bool = False, device: str = "auto"):
    """Assemble instances from PatchPerPix outputs by patch consensus.

    Parameters
    ----------
    numinst : ndarray of shape (3, [Z,] Y, X) or None
        Probabilities of 0, 1 and 2+ instances per pixel (e.g. the model's softmax). With
        ``None`` the foreground is the patch centre above ``patch_threshold``.
    patches : ndarray of shape (P, [Z,] Y, X), or CandidatePatches
        Patch probabilities, P = prod(patchshape), channel ``k`` = offset
        ``unravel_index(k, patchshape) - patchshape // 2``. float32 avoids a copy. Only the
        patches of the candidate centres are read: a :class:`CandidatePatches` holding
        those alone (e.g. from :func:`~ppp_zoo.postprocess.decode_candidates`) gives the
        same labels with a fraction of the memory.
    params : AssemblyParams
        Assembly parameters, including ``patchshape``.
    progress : callable, optional
        Called with the name of each step as it starts.
    return_result : bool
        Return an :class:`AssemblyResult` (labels plus sizes and timings) instead of the
        labels alone.
    device : {"auto", "cpu", "cuda"}
        Where the consensus, scores, cover and graph kernels run (the labels are the same):
        ``"cuda"`` on the GPU with numba's CUDA target, ``"cpu"`` on the CPU, ``"auto"`` on
        the GPU when numba finds a usable one and the CUDA kernels passed
        :func:`cuda_self_check` on it (and back on the CPU should its driver or compiler
        fail), else on the CPU. The result's ``device`` says where they ran.

    Returns
    -------
    labels : ndarray
        int32 label image of shape ([Z,] Y, X), ids 1..N in order of patch rank; or in
        overlapping mode a bool array (N, [Z,] Y, X), one mask per instance.

    Raises
    ------
    ValueError
        On shapes that do not match ``patchshape``, non-numeric or non-finite inputs, or an
        unknown ``device``.
    RuntimeError
        With ``device="cuda"`` on a machine without a usable CUDA GPU.

    Examples
    --------
    >>> import numpy as np
    >>> from ppp_zoo.postprocess import AssemblyParams, assemble
    >>> from ppp_zoo.data.targets import instance_targets
    >>> labels = np.zeros((32, 32), np.int32)
    >>> labels[4:12, 4:12] = 1; labels[12:20, 4:12] = 2; labels[20:30, 18:30] = 3
    >>> numinst, patches = instance_targets(labels, (9, 9))
    >>> out = assemble(numinst, patches, AssemblyParams(patchshape=(9, 9)))
    >>> int(out.max()), bool((out > 0).sum() == (labels > 0).sum())
    (3, True)
    """
    with parallel_section():  # one thread at a time where numba's threading layer needs it
        return _assemble(numinst, patches, params, progress=progress,
                         return_result=return_result, device=device)


def _assemble(numinst, patches, params: AssemblyParams, *, progress: ProgressCallback,
              return_result: bool, device: str):
    timings: dict[str, float] = {}
    dev = resolve_device(device)
    used: set[str] = set()

    def on_device(gpu, cpu, ran=lambda out: "cuda"):
        """Run a step's GPU version when the device is cuda, else (or, with auto, after a
        CUDA driver or compiler failure) its CPU version; ``ran(out)`` says where the GPU
        version really computed ``out``."""
        nonlocal dev
        if dev == "cuda":
            try:
                out = gpu()
                used.add(ran(out))
                return out
            except _cuda_probe.cuda_errors() as err:
                if device != "auto":
                    raise
                warnings.warn(f"the GPU assembly failed ({type(err).__name__}: {err}); "
                              "continuing on the CPU", RuntimeWarning, stacklevel=3)
                dev = "cpu"
        used.add("cpu")
        return cpu()

    def step(name: str):
        if progress is not None:
            progress(name)
        timings[name] = time.perf_counter()

    def done(name: str):
        timings[name] = time.perf_counter() - timings[name]

    step("foreground")
    prep, cand_flat = prepare(numinst, patches, params)
    done("foreground")
    spatial = prep.spatial
    if cand_flat.size == 0:
        empty = np.zeros((0,) + spatial, bool) if params.overlapping else np.zeros(spatial, np.int32)
        result = AssemblyResult(empty, 0, 0, 0, 0, timings, "cpu")  # no kernel ran
        return result if return_result else result.labels

    step("consensus+scores")
    consensus = on_device(partial(compute_consensus, prep, cand_flat, "cuda"),
                          partial(compute_consensus, prep, cand_flat, "cpu"),
                          ran=lambda c: c.device)  # the CPU's when the rounding differs
    done("consensus+scores")
    step("ranking")
    ranked, _scores = rank_patches(cand_flat, consensus)
    done("ranking")
    step("cover")
    selected = on_device(partial(cover_foreground, prep, ranked, "cuda"),
                         partial(cover_foreground, prep, ranked, "cpu"))
    done("cover")
    step("graph")
    edges, weights = on_device(partial(patch_graph, prep, selected, consensus, "cuda"),
                               partial(patch_graph, prep, selected, consensus, "cpu"))
    del consensus
    done("graph")
    step("partition")
    comp = partition_graph(len(selected), edges, weights, params.partition)
    done("partition")
    step("labelling")
    labels = label_instances(prep, selected, comp)
    done("labelling")
    n = labels.shape[0] if params.overlapping else int(labels.max(initial=0))
    result = AssemblyResult(labels, n, int(cand_flat.size), int(len(selected)), int(len(edges)),
                            timings, "+".join(sorted(used, reverse=True)))
    return result if return_result else result.labels
