"""CUDA kernels of the instance assembly (numba's CUDA target), and the host code that runs
them block by block.

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

import math

import numpy as np
from numba import cuda

from ._cuda_probe import SIM, cuda_errors, unavailable_reason  # noqa: F401 - used from here
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


# --------------------------------------------------------------------------- float32 ops
def _fma32_exact(a, b, c):
    """float32 a * b + c with one rounding, computed in float64 (simulator only).

    a * b is exact in float64; the sum is rounded to odd (TwoSum error, then the odd
    neighbour), which makes the final rounding to float32 the correctly rounded result.
    """
    p = float(a) * float(b)
    c = float(c)
    s = p + c
    if math.isfinite(s):
        t = s - p
        err = (p - (s - t)) + (c - t)
        if err != 0.0 and int(np.float64(s).view(np.int64)) & 1 == 0:
            s = math.nextafter(s, math.inf if err > 0 else -math.inf)
    return np.float32(s)


def _device(fn):
    """A device function on the GPU; the plain Python function in the simulator."""
    return fn if SIM else cuda.jit(device=True, inline=True)(fn)


if SIM:
    def _fma(a, b, c):
        return _fma32_exact(a, b, c)

    def _mul(a, b):
        return np.float32(np.float32(a) * np.float32(b))

    def _add(a, b):
        return np.float32(np.float32(a) + np.float32(b))

    def _sub(a, b):
        return np.float32(np.float32(a) - np.float32(b))
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def _fma(a, b, c):
        return cuda.fma(a, b, c)

    @cuda.jit(device=True, inline=True)
    def _mul(a, b):
        return libdevice.fmul_rn(a, b)  # never contracted into an FMA

    @cuda.jit(device=True, inline=True)
    def _add(a, b):
        return libdevice.fadd_rn(a, b)

    @cuda.jit(device=True, inline=True)
    def _sub(a, b):
        return libdevice.fsub_rn(a, b)


# min and max of numbers are overloads with star arguments in recent numba, which the
# CUDA target built into numba 0.68 cannot compile: the kernels use these (and abs) instead
@_device
def _imin(a, b):
    return a if a <= b else b


@_device
def _imax(a, b):
    return a if a >= b else b


@_device
def _iabs(a):
    return a if a >= 0 else -a


@_device
def _first(lo, step):
    """The first multiple of ``step`` that is >= max(lo, 0)."""
    return 0 if lo <= 0 else (lo + step - 1) // step * step


# --------------------------------------------------------------------------- CPU rounding
_ROUNDING = None


def cpu_vote_rounding():
    """How the compiled CPU vote kernel rounds: a tuple of four booleans (both in H, u in H
    and v in L, u in L and v in H, the accumulation), True where it fuses the multiply and
    the add into one FMA; None for an expression it rounds inconsistently.

    Probed once per process by running the CPU kernel ``_votes_with_centre`` itself on a
    row of values that tell the two roundings apart (long runs for its vector loop, short
    ones for its scalar loop).
    """
    global _ROUNDING
    if _ROUNDING is None:
        _ROUNDING = _probe_cpu_rounding()
    return _ROUNDING


def _probe_cpu_rounding():
    from . import _kernels as K

    rng = np.random.default_rng(20240601)
    th = np.float32(0.9)
    bg = np.float32(1.0) - th
    th2 = np.float32(th * th)
    f32 = np.float32

    def run(pa, pb, inv, s0):
        """srow after one centre's votes of u (position 0) with v = 1..n of one patch row."""
        n = len(pb)
        rx = n // 2 + 1
        px = 2 * rx + 1
        fx = 4 * rx + 1
        buf = np.full(fx, np.nan, np.float32)
        buf[0] = pa
        buf[1:n + 1] = pb
        span = np.array([[0, px, 0, px]], np.int64)
        srow = np.zeros(2 * rx, np.float32)
        srow[:n] = s0
        crow = np.zeros(2 * rx, np.uint16)
        K._votes_with_centre(0, buf, span, np.array([1, 1, px], np.int64),
                             np.array([1, 1, fx], np.int64), 2 * rx, th, bg, th2, f32(inv),
                             srow, crow)
        return srow[:n]

    def verdict(got, fused, plain):
        if np.array_equal(got, fused) and not np.array_equal(got, plain):
            return True
        if np.array_equal(got, plain) and not np.array_equal(got, fused):
            return False
        return None

    out = []
    for case in ("hh", "hl", "lh", "acc"):
        got, fused, plain = [], [], []
        for n in (70, 67, 3):
            high = rng.uniform(0.9001, 0.9999, n + 1).astype(np.float32)
            low = rng.uniform(0.0001, 0.0999, n + 1).astype(np.float32)
            if case == "hh":
                pa, pb = high[0], high[1:]
                fv = [_fma32_exact(pa, b, -th2) for b in pb]
                pv = [f32(f32(pa * b) - th2) for b in pb]
            elif case == "hl":
                pa, pb = high[0], low[1:]
                fv = [_fma32_exact(-pa, f32(1) - b, th2) for b in pb]
                pv = [f32(th2 - f32(pa * (f32(1) - b))) for b in pb]
            elif case == "lh":
                pa, pb = low[0], high[1:]
                fv = [_fma32_exact(-b, f32(1) - pa, th2) for b in pb]
                pv = [f32(th2 - f32(b * (f32(1) - pa))) for b in pb]
            else:  # pa = 1: the vote pb - th2 is exact both ways; the accumulation is not
                pa, pb = f32(1.0), high[1:]
                inv = f32(1.0 / (1.0 - float(th2)))
                s0 = rng.uniform(-1, 1, n).astype(np.float32)
                v = [f32(b - th2) for b in pb]
                got.append(run(pa, pb, inv, s0))
                fused.append(np.array([_fma32_exact(x, inv, s) for x, s in zip(v, s0)]))
                plain.append(np.array([f32(s + f32(x * inv)) for x, s in zip(v, s0)]))
                continue
            got.append(run(pa, pb, 1.0, 0.0))
            fused.append(np.array(fv, np.float32))
            plain.append(np.array(pv, np.float32))
        out.append(verdict(np.concatenate(got), np.concatenate(fused), np.concatenate(plain)))
    if any(v is None for v in out):
        return None
    return tuple(out)


# --------------------------------------------------------------------------- kernels
@cuda.jit(cache=True)
def _consensus_kernel(pw, f0, vmask, cand, ucoord, dtab, g0, n_u, rz, ry, rx, th, bg, th2,
                      inv_norm, height, step, fuse_hh, fuse_hl, fuse_lh, fuse_acc, ring, rcap):
    """C(u, v) of the voting pixels u = rows g0 .. g0 + n_u - 1, one thread per (u, column).

    ``pw`` (P, W) holds the patches of the pixels with flat index f0 .. f0 + W - 1 (every
    centre whose box reaches a u); ``cand`` (Z, Y, X) marks the candidate centres,
    ``ucoord`` (n_voting, 3) the voting pixels in raster order, ``dtab`` (n_columns, 3) the
    offset v - u of each column. Row g goes to ``ring[g % rcap]``. The centres are visited
    as the CPU pass visits them (stripes of ``height`` centre rows, even stripes first, then
    by (y, z, x)); the ``fuse_*`` flags say which expressions the CPU rounds once (FMA).
    """
    Z, Y, X = vmask.shape
    py, px = 2 * ry + 1, 2 * rx + 1
    n_cols = dtab.shape[0]
    one = np.float32(1.0)
    mth2 = -th2
    for idx in range(cuda.grid(1), n_u * n_cols, cuda.gridsize(1)):
        col = idx // n_u
        g = g0 + idx - col * n_u
        uz, uy, ux = ucoord[g, 0], ucoord[g, 1], ucoord[g, 2]
        vz, vy, vx = uz + dtab[col, 0], uy + dtab[col, 1], ux + dtab[col, 2]
        slot = g % rcap
        if vz < 0 or vz >= Z or vy < 0 or vy >= Y or vx < 0 or vx >= X \
                or vmask[vz, vy, vx] == 0:
            ring[slot, col] = np.nan
            continue
        zlo, zhi = _first(_imax(uz, vz) - rz, step), _imin(_imin(uz, vz) + rz, Z - 1)
        ylo, yhi = _first(_imax(uy, vy) - ry, step), _imin(_imin(uy, vy) + ry, Y - 1)
        xlo, xhi = _first(_imax(ux, vx) - rx, step), _imin(_imin(ux, vx) + rx, X - 1)
        s = np.float32(0.0)
        cnt = 0
        for parity in range(2):
            for cy in range(ylo, yhi + 1, step):
                if (cy // height) % 2 != parity:
                    continue
                for cz in range(zlo, zhi + 1, step):
                    for cx in range(xlo, xhi + 1, step):
                        if cand[cz, cy, cx] == 0:
                            continue
                        cf = (cz * Y + cy) * X + cx - f0
                        pa = pw[((uz - cz + rz) * py + (uy - cy + ry)) * px + (ux - cx + rx), cf]
                        if pa > th:
                            pb = pw[((vz - cz + rz) * py + (vy - cy + ry)) * px
                                    + (vx - cx + rx), cf]
                            if pb > th:
                                if fuse_hh:
                                    v = _fma(pa, pb, mth2)
                                else:
                                    v = _sub(_mul(pa, pb), th2)
                            elif pb < bg:
                                q = one - pb
                                if fuse_hl:
                                    v = _fma(-pa, q, th2)
                                else:
                                    v = _sub(th2, _mul(pa, q))
                            else:
                                continue
                        elif pa < bg:
                            pb = pw[((vz - cz + rz) * py + (vy - cy + ry)) * px
                                    + (vx - cx + rx), cf]
                            if pb > th:
                                q = one - pa
                                if fuse_lh:
                                    v = _fma(-pb, q, th2)
                                else:
                                    v = _sub(th2, _mul(pb, q))
                            else:
                                continue
                        else:
                            continue
                        if fuse_acc:
                            s = _fma(v, inv_norm, s)
                        else:
                            s = _add(s, _mul(v, inv_norm))
                        cnt += 1
        if cnt > 0:
            ring[slot, col] = s / np.float32(cnt)
        else:
            ring[slot, col] = np.nan


@cuda.jit(cache=True)
def _scores_kernel(pw, f0, vmask, vidx, ccoord, i0, i1, rz, ry, rx, th, bg, ring, rcap,
                   band_rows, cls_scr, term_scr, scores, n_high, n_low):
    """Score, |H_c| and |L_c| of the candidates i0 .. i1 - 1, one thread block per candidate.

    The block's threads classify the patch (``cls_scr``: 1 in H_c, -1 in L_c, else 0), then
    compute each pixel u's term (its pairs with the later v: +C for both in H, -C for one in
    H and one in L; float64, by patch plane), and one thread adds the terms up in the CPU
    pass's order: by bands of ``band_rows`` image rows, within a band by (y, z, x).
    """
    Z, Y, X = vmask.shape
    pz, py, px = 2 * rz + 1, 2 * ry + 1, 2 * rx + 1
    P = pz * py * px
    fy, fx = 4 * ry + 1, 4 * rx + 1
    half = ((4 * rz + 1) * fy * fx - 1) // 2
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    blk = cuda.blockIdx.x
    for i in range(i0 + blk, i1, cuda.gridDim.x):
        cz, cy, cx = ccoord[i, 0], ccoord[i, 1], ccoord[i, 2]
        cf = (cz * Y + cy) * X + cx - f0
        for k in range(tid, P, nt):
            z = cz + k // (py * px) - rz
            y = cy + (k // px) % py - ry
            x = cx + k % px - rx
            c = 0
            if 0 <= z < Z and 0 <= y < Y and 0 <= x < X and vmask[z, y, x] != 0:
                p = pw[k, cf]
                if p > th:
                    c = 1
                elif p < bg:
                    c = -1
            cls_scr[blk, k] = c
        cuda.syncthreads()
        for ka in range(tid, P, nt):
            ca = cls_scr[blk, ka]
            t = 0.0
            if ca != 0:
                za, ya, xa = ka // (py * px), (ka // px) % py, ka % px
                slot = vidx[cz + za - rz, cy + ya - ry, cx + xa - rx] % rcap
                for zb in range(za, pz):
                    acc = 0.0
                    for yb in range(py):
                        for xb in range(px):
                            kb = (zb * py + yb) * px + xb
                            if kb <= ka:
                                continue
                            cb = cls_scr[blk, kb]
                            if cb == 0 or (ca == -1 and cb != 1):
                                continue
                            col = ((zb - za + 2 * rz) * fy + (yb - ya + 2 * ry)) * fx \
                                + (xb - xa + 2 * rx) - half - 1
                            value = np.float64(ring[slot, col])
                            if ca == 1 and cb == 1:
                                acc += value
                            else:
                                acc -= value
                    t += acc
            term_scr[blk, ka] = t
        cuda.syncthreads()
        if tid == 0:
            nh = 0
            nl = 0
            total = 0.0
            part = 0.0
            band = -1
            for ky in range(py):
                y = cy + ky - ry
                if y < 0 or y >= Y:
                    continue
                if y // band_rows != band:
                    if band >= 0:
                        total += part
                    part = 0.0
                    band = y // band_rows
                for kz in range(pz):
                    for kx in range(px):
                        k = (kz * py + ky) * px + kx
                        c = cls_scr[blk, k]
                        if c != 0:
                            part += term_scr[blk, k]
                            if c == 1:
                                nh += 1
                            else:
                                nl += 1
            if band >= 0:
                total += part
            count = nh * (nh - 1) // 2 + nh * nl
            scores[i] = total / count if count > 0 else -1.0
            n_high[i] = nh
            n_low[i] = nl
        cuda.syncthreads()


@cuda.jit(cache=True)
def _footprint_kernel(pw, f0, items, centres, fg, rz, ry, rx, fc, bits):
    """Bit k of ``bits[i]`` (32 per word): pixel c_i + o_k is foreground with P > fc, for
    the items (indices into ``centres``) whose patches are in ``pw``."""
    Z, Y, X = fg.shape
    py, px = 2 * ry + 1, 2 * rx + 1
    P = (2 * rz + 1) * py * px
    W = bits.shape[1]
    for idx in range(cuda.grid(1), items.shape[0] * W, cuda.gridsize(1)):
        t = idx // W
        w = idx - t * W
        i = items[t]
        cz, cy, cx = centres[i, 0], centres[i, 1], centres[i, 2]
        cf = (cz * Y + cy) * X + cx - f0
        word = 0
        for k in range(32 * w, _imin(32 * w + 32, P)):
            z = cz + k // (py * px) - rz
            y = cy + (k // px) % py - ry
            x = cx + k % px - rx
            if 0 <= z < Z and 0 <= y < Y and 0 <= x < X and fg[z, y, x] != 0 \
                    and pw[k, cf] > fc:
                word |= 1 << (k - 32 * w)
        bits[i, w] = word


@cuda.jit(cache=True)
def _cover_kernel(centres, bits, rz, ry, rx, covered, selected, n_selected):
    """Greedy foreground cover in ranking order, by one thread block: a patch is selected
    when its footprint holds a pixel not yet covered, then covers its footprint."""
    py, px = 2 * ry + 1, 2 * rx + 1
    P = (2 * rz + 1) * py * px
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    m = 0
    for i in range(centres.shape[0]):
        cz, cy, cx = centres[i, 0], centres[i, 1], centres[i, 2]
        new = np.int32(0)
        for k in range(tid, P, nt):
            if (bits[i, k // 32] >> (k % 32)) & 1:
                if covered[cz + k // (py * px) - rz, cy + (k // px) % py - ry,
                           cx + k % px - rx] == 0:
                    new = np.int32(1)
        if cuda.syncthreads_or(new):
            for k in range(tid, P, nt):
                if (bits[i, k // 32] >> (k % 32)) & 1:
                    covered[cz + k // (py * px) - rz, cy + (k // px) % py - ry,
                            cx + k % px - rx] = 1
            if tid == 0:
                selected[m] = i
            m += 1
            cuda.syncthreads()
    if tid == 0:
        n_selected[0] = m


@cuda.jit(cache=True)
def _pair_count_kernel(order, centres, pz, py, px, counts):
    """Number of later centres (in y order) closer than 2 * patchshape on every axis."""
    n = order.shape[0]
    for ii in range(cuda.grid(1), n, cuda.gridsize(1)):
        a = order[ii]
        c = 0
        for jj in range(ii + 1, n):
            b = order[jj]
            if centres[b, 1] - centres[a, 1] >= 2 * py:
                break
            if _iabs(centres[b, 0] - centres[a, 0]) < 2 * pz \
                    and _iabs(centres[b, 2] - centres[a, 2]) < 2 * px:
                c += 1
        counts[ii] = c


@cuda.jit(cache=True)
def _pair_fill_kernel(order, centres, pz, py, px, offsets, edges):
    """The pairs counted by :func:`_pair_count_kernel`, (min, max), at ``offsets[ii]``."""
    n = order.shape[0]
    for ii in range(cuda.grid(1), n, cuda.gridsize(1)):
        a = order[ii]
        e = offsets[ii]
        for jj in range(ii + 1, n):
            b = order[jj]
            if centres[b, 1] - centres[a, 1] >= 2 * py:
                break
            if _iabs(centres[b, 0] - centres[a, 0]) < 2 * pz \
                    and _iabs(centres[b, 2] - centres[a, 2]) < 2 * px:
                edges[e, 0] = _imin(a, b)
                edges[e, 1] = _imax(a, b)
                e += 1


@cuda.jit(cache=True)
def _high_masks_kernel(pw, f0, nodes, centres, vmask, rz, ry, rx, th, stride, hmask, hspan):
    """H mask and per-line x extent of the nodes (indices into ``centres``) whose patches are
    in ``pw``, one thread per (node, patch line); as ``_kernels.high_masks``."""
    Z, Y, X = vmask.shape
    py, px = 2 * ry + 1, 2 * rx + 1
    L = (2 * rz + 1) * py
    for idx in range(cuda.grid(1), nodes.shape[0] * L, cuda.gridsize(1)):
        t = idx // L
        line = idx - t * L
        b = nodes[t]
        cz, cy, cx = centres[b, 0], centres[b, 1], centres[b, 2]
        cf = (cz * Y + cy) * X + cx - f0
        z = cz + line // py - rz
        y = cy + line % py - ry
        first = px
        last = 0
        for xk in range(px):
            k = line * px + xk
            x = cx + xk - rx
            h = 0
            if 0 <= z < Z and 0 <= y < Y and 0 <= x < X and vmask[z, y, x] != 0:
                if stride <= 1 or (z % stride == 0 and y % stride == 0 and x % stride == 0):
                    if pw[k, cf] > th:
                        h = 1
            hmask[b, k] = h
            if h:
                first = _imin(first, xk)
                last = xk + 1
        hspan[b, line, 0] = first
        hspan[b, line, 1] = last


@cuda.jit(cache=True)
def _mark_needed_kernel(slot_j, slot_i, nodes, nbr_node, centres, hmask, rz, ry, rx, needed):
    """``needed[i, q]`` = 1 for the pixels u (cell q of the grid c_b +- 3r of node
    b = nodes[i]) in H_a of a neighbour a of b."""
    py, px = 2 * ry + 1, 2 * rx + 1
    P = (2 * rz + 1) * py * px
    gz, gy, gx = 6 * rz + 1, 6 * ry + 1, 6 * rx + 1
    for t in range(cuda.grid(1), slot_j.shape[0], cuda.gridsize(1)):
        i = slot_i[t]
        b = nodes[i]
        a = nbr_node[slot_j[t]]
        for k in range(P):
            if hmask[a, k] == 0:
                continue
            qz = centres[a, 0] + k // (py * px) - rz - centres[b, 0] + 3 * rz
            qy = centres[a, 1] + (k // px) % py - ry - centres[b, 1] + 3 * ry
            qx = centres[a, 2] + k % px - rx - centres[b, 2] + 3 * rx
            if 0 <= qz < gz and 0 <= qy < gy and 0 <= qx < gx:
                needed[i, (qz * gy + qy) * gx + qx] = 1


@cuda.jit(cache=True)
def _later_sums_kernel(nodes, centres, hmask, hspan, vidx, cons, g0, rz, ry, rx, needed,
                       tsum, tcnt):
    """T_b(u): sum and number of the defined C(u, v), v in H_b after u, for the needed cells
    of every node's grid; the same loops, in the same order, as ``_kernels._later_sum``.
    ``cons`` holds the consensus rows g0 .. of the lines around the nodes."""
    pz, py, px = 2 * rz + 1, 2 * ry + 1, 2 * rx + 1
    fy, fx = 4 * ry + 1, 4 * rx + 1
    half = ((4 * rz + 1) * fy * fx - 1) // 2
    gz, gy, gx = 6 * rz + 1, 6 * ry + 1, 6 * rx + 1
    G = gz * gy * gx
    for idx in range(cuda.grid(1), nodes.shape[0] * G, cuda.gridsize(1)):
        i = idx // G
        q = idx - i * G
        if needed[i, q] == 0:
            continue
        b = nodes[i]
        z0, y0, x0 = centres[b, 0] - rz, centres[b, 1] - ry, centres[b, 2] - rx
        uz = centres[b, 0] + q // (gy * gx) - 3 * rz
        uy = centres[b, 1] + (q // gx) % gy - 3 * ry
        ux = centres[b, 2] + q % gx - 3 * rx
        row = vidx[uz, uy, ux] - g0
        total = 0.0
        count = 0
        for zl in range(_imax(0, uz - z0), _imin(pz, uz + 2 * rz - z0 + 1)):
            dz = z0 + zl - uz
            ylo = _imax(0, uy - 2 * ry - y0)
            if dz == 0:
                ylo = _imax(ylo, uy - y0)
            for yl in range(ylo, _imin(py, uy + 2 * ry - y0 + 1)):
                dy = y0 + yl - uy
                line = zl * py + yl
                lo = _imax(hspan[b, line, 0], ux - 2 * rx - x0)
                if dz == 0 and dy == 0:
                    lo = _imax(lo, ux - x0 + 1)
                hi = _imin(hspan[b, line, 1], ux + 2 * rx - x0 + 1)
                base = ((dz + 2 * rz) * fy + (dy + 2 * ry)) * fx + x0 - ux + 2 * rx - half - 1
                for xl in range(lo, hi):
                    if hmask[b, line * px + xl] != 0:
                        value = cons[row, base + xl]
                        if value == value:
                            total += np.float64(value)
                            count += 1
        tsum[i, q] = total
        tcnt[i, q] = count


@cuda.jit(cache=True)
def _slot_sums_kernel(slot_j, slot_i, nodes, nbr_node, nbr_slot, centres, hmask, rz, ry, rx,
                      tsum, tcnt, part_sum, part_cnt):
    """Per (node b, neighbour a): the sum over u in H_a (patch order) of T_b(u), as
    ``_kernels.edge_weight_parts`` adds them."""
    py, px = 2 * ry + 1, 2 * rx + 1
    P = (2 * rz + 1) * py * px
    gz, gy, gx = 6 * rz + 1, 6 * ry + 1, 6 * rx + 1
    for t in range(cuda.grid(1), slot_j.shape[0], cuda.gridsize(1)):
        i = slot_i[t]
        b = nodes[i]
        j = slot_j[t]
        a = nbr_node[j]
        total = 0.0
        count = 0
        for k in range(P):
            if hmask[a, k] == 0:
                continue
            qz = centres[a, 0] + k // (py * px) - rz - centres[b, 0] + 3 * rz
            qy = centres[a, 1] + (k // px) % py - ry - centres[b, 1] + 3 * ry
            qx = centres[a, 2] + k % px - rx - centres[b, 2] + 3 * rx
            if qz < 0 or qz >= gz or qy < 0 or qy >= gy or qx < 0 or qx >= gx:
                continue
            q = (qz * gy + qy) * gx + qx
            total += tsum[i, q]
            count += tcnt[i, q]
        part_sum[nbr_slot[j]] = total
        part_cnt[nbr_slot[j]] = count


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
        self.A = geo.shape[self.axis]
        self.ra = self.r[self.axis]
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
                                         np.arange(self.A + 1)).astype(np.int64)
        self.prep = prep

    def rows(self, l0: int, l1: int) -> int:
        l0, l1 = max(l0, 0), min(l1, self.A)
        return int(self.line_rows[l1] - self.line_rows[l0]) if l1 > l0 else 0

    def window_bytes(self, l0: int, l1: int) -> int:
        l0, l1 = max(l0, 0), min(l1, self.A)
        return 4 * self.P * max(l1 - l0, 0) * self.line_size


class _PatchWindow:
    """One device buffer that takes the patches of a run of lines at a time."""

    def __init__(self, layout: _Layout, max_lines: int):
        self.layout = layout
        self.buf = cuda.device_array(max(layout.P * max_lines * layout.line_size, 1), np.float32)

    def load(self, l0: int, l1: int):
        """(device array (P, W), f0): the patches of lines l0 .. l1 - 1 (clipped)."""
        lay = self.layout
        l0, l1 = max(l0, 0), min(l1, lay.A)
        f0, f1 = l0 * lay.line_size, l1 * lay.line_size
        view = self.buf[:lay.P * (f1 - f0)].reshape(lay.P, f1 - f0)
        view.copy_to_device(lay.prep.dense_columns(f0, f1))
        return view, f0


def _line_chunks(lines: np.ndarray, A: int, lines_per_chunk: int):
    """(m0, m1, items): the items (indices) whose line is in [m0, m1), chunk by chunk."""
    order = np.argsort(lines, kind="stable")
    sorted_lines = lines[order]
    step = max(int(lines_per_chunk), 1)
    for m0 in range(0, A, step):
        i0, i1 = np.searchsorted(sorted_lines, [m0, m0 + step])
        if i1 > i0:
            yield m0, min(m0 + step, A), np.ascontiguousarray(order[i0:i1], np.int64)


def _ring_to_host(ring, rcap: int, g0: int, g1: int, out: np.ndarray) -> None:
    g = g0
    while g < g1:
        s = g % rcap
        n = min(g1 - g, rcap - s)
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
    lay = _Layout(prep)
    rz, ry, rx = lay.r
    A, ra, P, n_cols = lay.A, lay.ra, lay.P, lay.n_cols
    cand_flat = np.ascontiguousarray(cand_flat, np.int64)
    order = np.argsort(cand_flat, kind="stable")
    ccoord = np.ascontiguousarray(prep.centres_of(cand_flat[order]), np.int64)
    cand_lines = np.searchsorted(ccoord[:, lay.axis], np.arange(A + 1)).astype(np.int64)
    cand3 = np.zeros(lay.shape, np.uint8)
    cand3.reshape(-1)[cand_flat] = 1
    fullshape = geo.fullshape
    dtab = np.ascontiguousarray(
        (np.indices(tuple(fullshape)).reshape(3, -1).T - 2 * geo.r)[n_cols + 1:], np.int64)

    # slabs of lines [l0, l1): the ring holds the rows of [l0 - 2 ra, l1), the patch window
    # the centres of [l0 - ra, l1 + ra)
    budget = _budget()
    slabs = []
    l0 = 0
    while l0 < A:
        l1 = l0 + 1
        while l1 < A and (lay.rows(l0 - 2 * ra, l1 + 1) * n_cols * 4
                          + lay.window_bytes(l0 - ra, l1 + 1 + ra)) <= budget:
            l1 += 1
        slabs.append((l0, l1))
        l0 = l1
    rcap = max(max(lay.rows(a - 2 * ra, b) for a, b in slabs), 1)
    max_lines = max(min(b + ra, A) - max(a - ra, 0) for a, b in slabs)

    th, bg = prep.th, prep.bg
    th2 = np.float32(th * th)
    inv_norm = np.float32(1.0 / (1.0 - float(th2)))  # in float64, as the CPU kernel
    height = max(2 * ry, 1)
    step = prep.params.fast_stride if prep.params.fast else 1
    fuse_hh, fuse_hl, fuse_lh, fuse_acc = rounding

    d_vmask, d_cand = cuda.to_device(lay.vmask), cuda.to_device(cand3)
    d_vidx, d_ucoord = cuda.to_device(lay.vidx), cuda.to_device(lay.ucoord)
    d_dtab, d_ccoord = cuda.to_device(dtab), cuda.to_device(ccoord)
    ring = cuda.device_array((rcap, n_cols), np.float32)
    window = _PatchWindow(lay, max_lines)
    n_cand = len(cand_flat)
    d_scores = cuda.device_array(n_cand, np.float64)
    d_high = cuda.device_array(n_cand, np.int64)
    d_low = cuda.device_array(n_cand, np.int64)
    sblocks, sthreads = SIM_LAUNCH if SIM else (min(max(n_cand, 1), 2048), 128)
    cls_scr = cuda.device_array((sblocks, P), np.int8)
    term_scr = cuda.device_array((sblocks, P), np.float64)
    cons = np.empty((prep.n_voting, n_cols), np.float32)
    last_plan["consensus"] = {"slabs": len(slabs), "ring_rows": rcap,
                              "rows": int(prep.n_voting)}

    scored = 0  # candidates of lines < scored have their scores
    for l0, l1 in slabs:
        pw, f0 = window.load(l0 - ra, l1 + ra)
        g0, g1 = int(lay.line_rows[l0]), int(lay.line_rows[l1])
        if g1 > g0:
            blocks, threads = _grid((g1 - g0) * n_cols)
            _consensus_kernel[blocks, threads](
                pw, f0, d_vmask, d_cand, d_ucoord, d_dtab, g0, g1 - g0, rz, ry, rx, th, bg,
                th2, inv_norm, height, step, fuse_hh, fuse_hl, fuse_lh, fuse_acc, ring, rcap)
            _ring_to_host(ring, rcap, g0, g1, cons)
        s1 = A if l1 == A else max(l1 - ra, 0)
        i0, i1 = int(cand_lines[scored]), int(cand_lines[s1])
        if i1 > i0:
            _scores_kernel[sblocks, sthreads](
                pw, f0, d_vmask, d_vidx, d_ccoord, i0, i1, rz, ry, rx, th, bg, ring, rcap,
                BAND_ROWS, cls_scr, term_scr, d_scores, d_high, d_low)
        scored = max(scored, s1)
    scores = np.empty(n_cand, np.float64)
    high = np.empty(n_cand, np.int64)
    scores[order] = d_scores.copy_to_host()
    high[order] = d_high.copy_to_host()
    return Consensus(cons, prep.vidx, geo, scores, high, device="cuda")


def cover_foreground(prep, ranked_flat: np.ndarray) -> np.ndarray:
    """Step 3 on the GPU: the positions (into ``ranked_flat``) of the selected patches."""
    lay = _Layout(prep)
    rz, ry, rx = lay.r
    n = len(ranked_flat)
    centres = np.ascontiguousarray(prep.centres_of(ranked_flat), np.int64)
    W = (lay.P + 31) // 32
    d_centres = cuda.to_device(centres)
    d_fg = cuda.to_device(lay.fgmask)
    bits = cuda.device_array((n, W), np.uint32)
    per_chunk = max(_budget() // max(lay.window_bytes(0, 1), 1), 1)
    window = _PatchWindow(lay, min(per_chunk, lay.A))
    fc = np.float32(prep.params.fc_threshold)
    for m0, m1, items in _line_chunks(centres[:, lay.axis], lay.A, per_chunk):
        pw, f0 = window.load(m0, m1)
        blocks, threads = _grid(len(items) * W)
        _footprint_kernel[blocks, threads](pw, f0, cuda.to_device(items), d_centres, d_fg,
                                           rz, ry, rx, fc, bits)
    del window
    covered = cuda.to_device(np.zeros(lay.shape, np.uint8))
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


def high_masks(prep, centres: np.ndarray, stride: int):
    """H masks (n, P) uint8 and extents (n, pz * py, 2) int64, as ``_kernels.high_masks``;
    also returns them on the device."""
    lay = _Layout(prep)
    rz, ry, rx = lay.r
    n = len(centres)
    L = (2 * rz + 1) * (2 * ry + 1)
    d_hmask = cuda.device_array((max(n, 1), lay.P), np.uint8)
    d_hspan = cuda.device_array((max(n, 1), L, 2), np.int64)
    d_centres = cuda.to_device(np.ascontiguousarray(centres, np.int64))
    d_vmask = cuda.to_device(lay.vmask)
    per_chunk = max(_budget() // max(lay.window_bytes(0, 1), 1), 1)
    window = _PatchWindow(lay, min(per_chunk, lay.A))
    for m0, m1, items in _line_chunks(centres[:, lay.axis], lay.A, per_chunk):
        pw, f0 = window.load(m0, m1)
        blocks, threads = _grid(len(items) * L)
        _high_masks_kernel[blocks, threads](pw, f0, cuda.to_device(items), d_centres, d_vmask,
                                            rz, ry, rx, prep.th, int(stride), d_hmask, d_hspan)
    return d_hmask, d_hspan, d_centres


def edge_weight_parts(prep, centres, d_hmask, d_hspan, d_centres, nbr_start, nbr_node,
                      nbr_slot, cons: np.ndarray, part_sum: np.ndarray,
                      part_cnt: np.ndarray) -> None:
    """Step 5 on the GPU: as ``_kernels.edge_weight_parts`` (fills part_sum / part_cnt).

    The nodes go in chunks of lines; a chunk holds the consensus rows of its lines +- 3 r
    (the pixels u whose T_b(u) its nodes need) and a (6 r + 1)^3 grid of T per node.
    """
    lay = _Layout(prep)
    rz, ry, rx = lay.r
    A, ra, n_cols = lay.A, lay.ra, lay.n_cols
    G = (6 * rz + 1) * (6 * ry + 1) * (6 * rx + 1)
    n = len(centres)
    degree = np.diff(nbr_start)
    lines = centres[:, lay.axis]
    node_order = np.argsort(lines, kind="stable")
    sorted_lines = lines[node_order]
    d_vidx = cuda.to_device(lay.vidx)
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
        while m1 < A:
            k1 = int(np.searchsorted(sorted_lines, m1 + 1))
            cost = (lay.rows(m0 - 3 * ra, m1 + 1 + 3 * ra) * n_cols * 4
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
        g0 = int(lay.line_rows[max(m0 - 3 * ra, 0)])
        g1 = int(lay.line_rows[min(m1 + 3 * ra, A)])
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
