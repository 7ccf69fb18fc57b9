"""CUDA kernels of the instance assembly (numba's CUDA target): the host code that runs
them block by block, and the one module the assembly takes them from.

The kernels themselves live in ``_cuda_consensus.py`` (steps 1-2, with the float32
operations that round as the CPU kernel does) and ``_cuda_graph.py`` (steps 3-5); the probe
of the CPU kernel's rounding in ``_cuda_rounding.py``. Every one of their names can be
imported from here too.

Imported (with ``numba.cuda``) when the kernels are about to run: ``device="cuda"``, or
``"auto"`` on a machine where numba finds a GPU (the self-check of
:func:`ppp_zoo.postprocess.assembly.cuda_self_check` runs them first; ``auto`` takes the GPU
only when they gave the CPU kernels' results there). Nothing is compiled before a kernel
first runs. What runs where:

- GPU: the consensus C (step 1) and the patch scores, |H_c| and |L_c| (step 2); the
  foreground cover (step 3; one thread block walks the ranking, which is sequential by
  nature); the candidate edges, the H masks and the edge weights (steps 4-5).
- CPU: foreground classes and candidates (step 0), the ranking (a sort), the partition
  (step 6) and the labelling (step 7), as with ``device="cpu"``.

Blocks: the image is cut into slabs along its outermost axis (z in 3D, y in 2D). For each
slab the GPU holds the patches of the centres that reach it and the consensus rows of the
slab and of the ``2 r`` lines before it (a ring of rows), so that the scores of the centres
whose boxes are complete can be computed before the rows leave the ring; every finished
row is copied to the host. The edge weights read host consensus rows again, one window of
lines at a time. :data:`MAX_BLOCK_BYTES` bounds what one block holds on the GPU.

Same results as the CPU kernels (``_kernels.py``):

- Consensus: each C(u, v) is the float32 sum of the same votes in the same order (the
  centres by stripe parity, then by (y, z, x)), each vote and each accumulation rounded as
  the CPU kernel rounds it: where the compiled CPU kernel fuses a multiply and an add into
  one FMA (probed once per process on the compiled kernel, :func:`cpu_vote_rounding`),
  the GPU uses ``cuda.fma``; where it does not, the GPU uses multiplies and adds that are
  never contracted (libdevice ``__fmul_rn`` / ``__fadd_rn``); should the probe find no
  consistent rounding, consensus and scores run on the CPU (with a warning). No atomics:
  every value has one owner thread. So C is bit for bit the CPU's.
- |H_c|, |L_c|, the cover, the edges and the H masks are integer or comparison results.
- The scores and the edge weights are float64 sums of float32 consensus values, added in
  the CPU kernels' source order (bands of 16 pixel rows, pixels, patch planes, runs). The
  CPU kernels allow their compiler to reassociate these sums (fast-math ``reassoc``), which
  it may do to vectorise a run on some machines; then a score or weight can differ from
  the CPU's in its last bits, and the labels only if a score lies within about 1e-15 of a
  5-decimal rounding boundary (scores are rounded before ranking). Where this was written
  (x86-64 with AVX-512) the scores of a 256x256 DSB crop with noisy 25x25 patches (12939
  candidates) and every value in ``tests/test_cuda_assembly.py`` came out bit for bit equal.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._cuda_consensus import (  # noqa: F401 - the kernels and device functions, from here too
    _add,
    _consensus_kernel,
    _device,
    _fma,
    _imax,
    _imin,
    _mul,
    _scores_kernel,
    _sub,
)
from ._cuda_graph import (  # noqa: F401
    _cover_kernel,
    _footprint_kernel,
    _high_masks_kernel,
    _iabs,
    _later_sums_kernel,
    _mark_needed_kernel,
    _pair_count_kernel,
    _pair_fill_kernel,
    _slot_sums_kernel,
)
from ._cuda_probe import SIM, cuda_errors, unavailable_reason  # noqa: F401 - used from here
from ._cuda_rounding import _fma32_exact, _probe_cpu_rounding, cpu_vote_rounding  # noqa: F401
from ._state import BAND_ROWS, Consensus
from .errors import PostprocessError

#: most bytes one block (consensus rows, patch window, scratch) takes on the GPU; the
#: block is also kept under 60 % of the free GPU memory
MAX_BLOCK_BYTES = 4 << 30


def _budget() -> int:
    budget = MAX_BLOCK_BYTES
    if not SIM:
        free, _total = cuda.current_context().get_memory_info()
        budget = min(budget, int(free * 0.6))
    return max(int(budget), 1)


# --------------------------------------------------------------------------- host side
#: (blocks, threads per block) of every launch in the simulator, which runs each thread of a
#: block as a Python thread (barriers are slow there)
SIM_LAUNCH = (2, 2)

#: how the last :func:`compute_consensus` and :func:`edge_weight_parts` cut their work
#: (numbers of blocks, ring rows), for tests and diagnostics
last_plan: dict = {}


def _grid(total: int, threads: int = 256):
    """(blocks, threads) of a grid-stride launch over ``total`` items."""
    if SIM:
        return SIM_LAUNCH
    return max(1, min((int(total) + threads - 1) // threads, 1 << 16)), threads


class _Layout:
    """The image cut into lines along its outermost axis (z in 3D, y in 2D): the lines of a
    block are one run of flat pixel indices and of consensus rows."""

    def __init__(self, prep):
        geo = prep.geo
        self.shape = Z, Y, X = geo.shape
        self.r = tuple(int(v) for v in geo.r)
        self.P = int(np.prod(geo.patchshape))
        self.n_cols = geo.n_columns
        self.axis = 0 if Z > 1 else 1
        self.n_lines = geo.shape[self.axis]
        self.axis_radius = self.r[self.axis]
        self.line_size = (Y * X) if self.axis == 0 else X
        rz, ry, rx = self.r
        core = (slice(rz, rz + Z), slice(ry, ry + Y), slice(rx, rx + X))
        self.vmask = np.ascontiguousarray(prep.vmask[core])
        self.fgmask = np.ascontiguousarray(prep.fgmask[core])
        self.vidx = np.ascontiguousarray(prep.vidx[core])
        self.ucoord = np.ascontiguousarray(
            np.stack(np.unravel_index(np.flatnonzero(self.vmask), self.shape), axis=1),
            dtype=np.int64)
        #: first consensus row of each line (and the number of rows at the end)
        self.line_rows = np.searchsorted(self.ucoord[:, self.axis],
                                         np.arange(self.n_lines + 1)).astype(np.int64)
        self.prep = prep

    def rows(self, l0: int, l1: int) -> int:
        l0, l1 = max(l0, 0), min(l1, self.n_lines)
        return int(self.line_rows[l1] - self.line_rows[l0]) if l1 > l0 else 0

    def window_bytes(self, l0: int, l1: int) -> int:
        l0, l1 = max(l0, 0), min(l1, self.n_lines)
        return 4 * self.P * max(l1 - l0, 0) * self.line_size


class _PatchWindow:
    """One device buffer that takes the patches of a run of lines at a time."""

    def __init__(self, layout: _Layout, max_lines: int):
        self.layout = layout
        self.buf = cuda.device_array(max(layout.P * max_lines * layout.line_size, 1), np.float32)

    def load(self, l0: int, l1: int):
        """(device array (P, W), window_start): the patches of lines l0 .. l1 - 1 (clipped)."""
        layout = self.layout
        l0, l1 = max(l0, 0), min(l1, layout.n_lines)
        window_start, window_end = l0 * layout.line_size, l1 * layout.line_size
        width = window_end - window_start
        view = self.buf[:layout.P * width].reshape(layout.P, width)
        view.copy_to_device(layout.prep.dense_columns(window_start, window_end))
        return view, window_start


def _line_chunks(lines: np.ndarray, n_lines: int, lines_per_chunk: int):
    """(m0, m1, items): the items (indices) whose line is in [m0, m1), chunk by chunk."""
    order = np.argsort(lines, kind="stable")
    sorted_lines = lines[order]
    step = max(int(lines_per_chunk), 1)
    for m0 in range(0, n_lines, step):
        i0, i1 = np.searchsorted(sorted_lines, [m0, m0 + step])
        if i1 > i0:
            yield m0, min(m0 + step, n_lines), np.ascontiguousarray(order[i0:i1], np.int64)


def _ring_to_host(ring, ring_rows: int, g0: int, g1: int, out: np.ndarray) -> None:
    g = g0
    while g < g1:
        s = g % ring_rows
        n = min(g1 - g, ring_rows - s)
        ring[s:s + n].copy_to_host(out[g:g + n])
        g += n


def compute_consensus(prep, cand_flat: np.ndarray):
    """Steps 1-2 on the GPU (see :func:`ppp_zoo.postprocess.assembly.compute_consensus`)."""
    rounding = cpu_vote_rounding()
    if rounding is None:
        raise RuntimeError("the CPU vote kernel rounds its expressions inconsistently on this "
                           "machine, so the GPU cannot reproduce its consensus (the assembly "
                           "computes it on the CPU then)")
    geo = prep.geo
    if int(np.prod(geo.patchshape)) > np.iinfo(np.uint16).max:
        raise PostprocessError(f"patchshape {geo.patchshape} is too large (at most 65535 offsets)")
    layout = _Layout(prep)
    rz, ry, rx = layout.r
    n_lines, axis_radius = layout.n_lines, layout.axis_radius
    P, n_cols = layout.P, layout.n_cols
    cand_flat = np.ascontiguousarray(cand_flat, np.int64)
    order = np.argsort(cand_flat, kind="stable")
    ccoord = np.ascontiguousarray(prep.centres_of(cand_flat[order]), np.int64)
    cand_lines = np.searchsorted(ccoord[:, layout.axis], np.arange(n_lines + 1)).astype(np.int64)
    cand_mask = np.zeros(layout.shape, np.uint8)
    cand_mask.reshape(-1)[cand_flat] = 1
    fullshape = geo.fullshape
    col_offsets = np.ascontiguousarray(
        (np.indices(tuple(fullshape)).reshape(3, -1).T - 2 * geo.r)[n_cols + 1:], np.int64)

    # slabs of lines [l0, l1): the ring holds the rows of [l0 - 2 axis_radius, l1), the patch
    # window the centres of [l0 - axis_radius, l1 + axis_radius)
    budget = _budget()
    slabs = []
    l0 = 0
    while l0 < n_lines:
        l1 = l0 + 1
        while l1 < n_lines and (layout.rows(l0 - 2 * axis_radius, l1 + 1) * n_cols * 4
                                + layout.window_bytes(l0 - axis_radius, l1 + 1 + axis_radius)
                                ) <= budget:
            l1 += 1
        slabs.append((l0, l1))
        l0 = l1
    ring_rows = max(max(layout.rows(a - 2 * axis_radius, b) for a, b in slabs), 1)
    max_lines = max(min(b + axis_radius, n_lines) - max(a - axis_radius, 0) for a, b in slabs)

    th, bg = prep.th, prep.bg
    th2 = np.float32(th * th)
    inv_norm = np.float32(1.0 / (1.0 - float(th2)))  # in float64, as the CPU kernel
    height = max(2 * ry, 1)
    fuse_hh, fuse_hl, fuse_lh, fuse_acc = rounding

    d_vmask, d_cand = cuda.to_device(layout.vmask), cuda.to_device(cand_mask)
    d_vidx, d_ucoord = cuda.to_device(layout.vidx), cuda.to_device(layout.ucoord)
    d_col_offsets, d_ccoord = cuda.to_device(col_offsets), cuda.to_device(ccoord)
    ring = cuda.device_array((ring_rows, n_cols), np.float32)
    window = _PatchWindow(layout, max_lines)
    n_cand = len(cand_flat)
    d_scores = cuda.device_array(n_cand, np.float64)
    d_high = cuda.device_array(n_cand, np.int64)
    d_low = cuda.device_array(n_cand, np.int64)
    score_blocks, score_threads = SIM_LAUNCH if SIM else (min(max(n_cand, 1), 2048), 128)
    cls_scratch = cuda.device_array((score_blocks, P), np.int8)
    term_scratch = cuda.device_array((score_blocks, P), np.float64)
    cons = np.empty((prep.n_voting, n_cols), np.float32)
    last_plan["consensus"] = {"slabs": len(slabs), "ring_rows": ring_rows,
                              "rows": int(prep.n_voting)}

    scored = 0  # candidates of lines < scored have their scores
    for l0, l1 in slabs:
        window_patches, window_start = window.load(l0 - axis_radius, l1 + axis_radius)
        g0, g1 = int(layout.line_rows[l0]), int(layout.line_rows[l1])
        if g1 > g0:
            blocks, threads = _grid((g1 - g0) * n_cols)
            _consensus_kernel[blocks, threads](
                window_patches, window_start, d_vmask, d_cand, d_ucoord, d_col_offsets, g0,
                g1 - g0, rz, ry, rx, th, bg, th2, inv_norm, height, fuse_hh, fuse_hl,
                fuse_lh, fuse_acc, ring, ring_rows)
            _ring_to_host(ring, ring_rows, g0, g1, cons)
        score_end = n_lines if l1 == n_lines else max(l1 - axis_radius, 0)
        i0, i1 = int(cand_lines[scored]), int(cand_lines[score_end])
        if i1 > i0:
            _scores_kernel[score_blocks, score_threads](
                window_patches, window_start, d_vmask, d_vidx, d_ccoord, i0, i1, rz, ry, rx, th,
                bg, ring, ring_rows, BAND_ROWS, cls_scratch, term_scratch, d_scores, d_high,
                d_low)
        scored = max(scored, score_end)
    scores = np.empty(n_cand, np.float64)
    high = np.empty(n_cand, np.int64)
    scores[order] = d_scores.copy_to_host()
    high[order] = d_high.copy_to_host()
    return Consensus(cons, prep.vidx, geo, scores, high, device="cuda")


def cover_foreground(prep, ranked_flat: np.ndarray) -> np.ndarray:
    """Step 3 on the GPU: the positions (into ``ranked_flat``) of the selected patches."""
    layout = _Layout(prep)
    rz, ry, rx = layout.r
    n = len(ranked_flat)
    centres = np.ascontiguousarray(prep.centres_of(ranked_flat), np.int64)
    W = (layout.P + 31) // 32
    d_centres = cuda.to_device(centres)
    d_fg = cuda.to_device(layout.fgmask)
    bits = cuda.device_array((n, W), np.uint32)
    per_chunk = max(_budget() // max(layout.window_bytes(0, 1), 1), 1)
    window = _PatchWindow(layout, min(per_chunk, layout.n_lines))
    fc = np.float32(prep.params.fc_threshold)
    for m0, m1, items in _line_chunks(centres[:, layout.axis], layout.n_lines, per_chunk):
        window_patches, window_start = window.load(m0, m1)
        blocks, threads = _grid(len(items) * W)
        _footprint_kernel[blocks, threads](window_patches, window_start, cuda.to_device(items),
                                           d_centres, d_fg, rz, ry, rx, fc, bits)
    del window
    covered = cuda.to_device(np.zeros(layout.shape, np.uint8))
    selected = cuda.device_array(max(n, 1), np.int64)
    n_selected = cuda.device_array(1, np.int64)
    _cover_kernel[1, SIM_LAUNCH[1] if SIM else 256](d_centres, bits, rz, ry, rx, covered, selected,
                                        n_selected)
    m = int(n_selected.copy_to_host()[0])
    return selected.copy_to_host()[:m]


def candidate_edges(centres: np.ndarray, patchshape) -> np.ndarray:
    """Step 4 on the GPU: as ``_kernels.candidate_edges`` (same pairs, same order)."""
    n = len(centres)
    pz, py, px = (int(p) for p in patchshape)
    order = np.argsort(centres[:, 1], kind="stable").astype(np.int64)
    d_order = cuda.to_device(order)
    d_centres = cuda.to_device(np.ascontiguousarray(centres, np.int64))
    counts = cuda.device_array(max(n, 1), np.int64)
    blocks, threads = _grid(n)
    if n:
        _pair_count_kernel[blocks, threads](d_order, d_centres, pz, py, px, counts)
    counts = counts.copy_to_host()[:n]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    E = int(offsets[-1])
    if E == 0:
        return np.empty((0, 2), np.int64)
    edges = cuda.device_array((E, 2), np.int64)
    _pair_fill_kernel[blocks, threads](d_order, d_centres, pz, py, px,
                                       cuda.to_device(offsets), edges)
    return edges.copy_to_host()


def high_masks(prep, centres: np.ndarray):
    """H masks (n, P) uint8 and extents (n, pz * py, 2) int64, as ``_kernels.high_masks``;
    also returns them on the device."""
    layout = _Layout(prep)
    rz, ry, rx = layout.r
    n = len(centres)
    L = (2 * rz + 1) * (2 * ry + 1)
    d_hmask = cuda.device_array((max(n, 1), layout.P), np.uint8)
    d_hspan = cuda.device_array((max(n, 1), L, 2), np.int64)
    d_centres = cuda.to_device(np.ascontiguousarray(centres, np.int64))
    d_vmask = cuda.to_device(layout.vmask)
    per_chunk = max(_budget() // max(layout.window_bytes(0, 1), 1), 1)
    window = _PatchWindow(layout, min(per_chunk, layout.n_lines))
    for m0, m1, items in _line_chunks(centres[:, layout.axis], layout.n_lines, per_chunk):
        window_patches, window_start = window.load(m0, m1)
        blocks, threads = _grid(len(items) * L)
        _high_masks_kernel[blocks, threads](window_patches, window_start, cuda.to_device(items),
                                            d_centres, d_vmask, rz, ry, rx, prep.th,
                                            d_hmask, d_hspan)
    return d_hmask, d_hspan, d_centres


def edge_weight_parts(prep, centres, d_hmask, d_hspan, d_centres, nbr_start, nbr_node,
                      nbr_slot, cons: np.ndarray, part_sum: np.ndarray,
                      part_cnt: np.ndarray) -> None:
    """Step 5 on the GPU: as ``_kernels.edge_weight_parts`` (fills part_sum / part_cnt).

    The nodes go in chunks of lines; a chunk holds the consensus rows of its lines +- 3 r
    (the pixels u whose T_b(u) its nodes need) and a (6 r + 1)^3 grid of T per node.
    """
    layout = _Layout(prep)
    rz, ry, rx = layout.r
    n_lines, axis_radius, n_cols = layout.n_lines, layout.axis_radius, layout.n_cols
    G = (6 * rz + 1) * (6 * ry + 1) * (6 * rx + 1)
    n = len(centres)
    degree = np.diff(nbr_start)
    lines = centres[:, layout.axis]
    node_order = np.argsort(lines, kind="stable")
    sorted_lines = lines[node_order]
    d_vidx = cuda.to_device(layout.vidx)
    d_nbr_node = cuda.to_device(np.ascontiguousarray(nbr_node, np.int64))
    d_nbr_slot = cuda.to_device(np.ascontiguousarray(nbr_slot, np.int64))
    d_sum = cuda.to_device(part_sum)
    d_cnt = cuda.to_device(part_cnt)
    budget = _budget()
    chunks = 0
    k0 = 0
    while k0 < n:
        m0 = int(sorted_lines[k0])
        m1 = m0 + 1
        while m1 < n_lines:
            k1 = int(np.searchsorted(sorted_lines, m1 + 1))
            cost = (layout.rows(m0 - 3 * axis_radius, m1 + 1 + 3 * axis_radius) * n_cols * 4
                    + (k1 - k0) * G * 13)
            if cost > budget:
                break
            m1 += 1
        k1 = int(np.searchsorted(sorted_lines, m1))
        nodes = node_order[k0:k1]
        nodes = np.ascontiguousarray(nodes[degree[nodes] > 0], np.int64)
        k0 = k1
        if len(nodes) == 0:
            continue
        chunks += 1
        lengths = degree[nodes]
        slot_i = np.repeat(np.arange(len(nodes), dtype=np.int64), lengths)
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        slot_j = (nbr_start[nodes][slot_i] + np.arange(len(slot_i)) - first[slot_i]).astype(np.int64)
        g0 = int(layout.line_rows[max(m0 - 3 * axis_radius, 0)])
        g1 = int(layout.line_rows[min(m1 + 3 * axis_radius, n_lines)])
        d_cons = cuda.to_device(cons[g0:max(g1, g0 + 1)])
        d_nodes = cuda.to_device(nodes)
        d_slot_i, d_slot_j = cuda.to_device(slot_i), cuda.to_device(slot_j)
        needed = cuda.to_device(np.zeros((len(nodes), G), np.uint8))
        tsum = cuda.device_array((len(nodes), G), np.float64)
        tcnt = cuda.device_array((len(nodes), G), np.int32)
        blocks, threads = _grid(len(slot_j))
        _mark_needed_kernel[blocks, threads](d_slot_j, d_slot_i, d_nodes, d_nbr_node,
                                             d_centres, d_hmask, rz, ry, rx, needed)
        blocks, threads = _grid(len(nodes) * G)
        _later_sums_kernel[blocks, threads](d_nodes, d_centres, d_hmask, d_hspan, d_vidx,
                                            d_cons, g0, rz, ry, rx, needed, tsum, tcnt)
        blocks, threads = _grid(len(slot_j))
        _slot_sums_kernel[blocks, threads](d_slot_j, d_slot_i, d_nodes, d_nbr_node,
                                           d_nbr_slot, d_centres, d_hmask, rz, ry, rx, tsum,
                                           tcnt, d_sum, d_cnt)
    d_sum.copy_to_host(part_sum)
    d_cnt.copy_to_host(part_cnt)
    last_plan["edges"] = {"chunks": chunks}
