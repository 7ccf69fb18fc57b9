"""CUDA kernels of assembly steps 1-2: the consensus C of every voting pixel and the patch
scores, |H_c| and |L_c| (run block by block by ``compute_consensus`` in
``_cuda_kernels.py``).

Also the device functions they call: float32 multiply, add, subtract and FMA whose rounding
is chosen to match the CPU kernel's (see ``_cuda_rounding.py``), and small integer helpers.
The helpers stay in this file because numba's cache of a kernel notices changes to the
kernel's own file only.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._cuda_probe import SIM
from ._cuda_rounding import _fma32_exact


# --------------------------------------------------------------------------- device functions
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
# CUDA target built into numba 0.68 cannot compile: the kernels use these instead
@_device
def _imin(a, b):
    return a if a <= b else b


@_device
def _imax(a, b):
    return a if a >= b else b


# --------------------------------------------------------------------------- kernels
@cuda.jit(cache=True)
def _consensus_kernel(window_patches, window_start, vmask, cand_mask, ucoord, col_offsets, g0,
                      n_u, rz, ry, rx, th, bg, th2, inv_norm, height, fuse_hh, fuse_hl,
                      fuse_lh, fuse_acc, ring, ring_rows):
    """C(u, v) of the voting pixels u = rows g0 .. g0 + n_u - 1, one thread per (u, column).

    ``window_patches`` (P, W) holds the patches of the pixels with flat index
    ``window_start`` .. ``window_start + W - 1`` (every centre whose box reaches a u);
    ``cand_mask`` (Z, Y, X) marks the candidate centres, ``ucoord`` (n_voting, 3) the voting
    pixels in raster order, ``col_offsets`` (n_columns, 3) the offset v - u of each column.
    Row g goes to ``ring[g % ring_rows]``. The centres are visited as the CPU pass visits
    them (stripes of ``height`` centre rows, even stripes first, then by (y, z, x)); the
    ``fuse_*`` flags say which expressions the CPU rounds once (FMA).
    """
    Z, Y, X = vmask.shape
    py, px = 2 * ry + 1, 2 * rx + 1
    n_cols = col_offsets.shape[0]
    one = np.float32(1.0)
    mth2 = -th2
    for idx in range(cuda.grid(1), n_u * n_cols, cuda.gridsize(1)):
        col = idx // n_u
        g = g0 + idx - col * n_u
        uz, uy, ux = ucoord[g, 0], ucoord[g, 1], ucoord[g, 2]
        vz, vy, vx = uz + col_offsets[col, 0], uy + col_offsets[col, 1], ux + col_offsets[col, 2]
        slot = g % ring_rows
        if vz < 0 or vz >= Z or vy < 0 or vy >= Y or vx < 0 or vx >= X \
                or vmask[vz, vy, vx] == 0:
            ring[slot, col] = np.nan
            continue
        zlo, zhi = _imax(_imax(uz, vz) - rz, 0), _imin(_imin(uz, vz) + rz, Z - 1)
        ylo, yhi = _imax(_imax(uy, vy) - ry, 0), _imin(_imin(uy, vy) + ry, Y - 1)
        xlo, xhi = _imax(_imax(ux, vx) - rx, 0), _imin(_imin(ux, vx) + rx, X - 1)
        s = np.float32(0.0)
        cnt = 0
        for parity in range(2):
            for cy in range(ylo, yhi + 1):
                if (cy // height) % 2 != parity:
                    continue
                for cz in range(zlo, zhi + 1):
                    for cx in range(xlo, xhi + 1):
                        if cand_mask[cz, cy, cx] == 0:
                            continue
                        centre_col = (cz * Y + cy) * X + cx - window_start
                        pa = window_patches[((uz - cz + rz) * py + (uy - cy + ry)) * px
                                            + (ux - cx + rx), centre_col]
                        if pa > th:
                            pb = window_patches[((vz - cz + rz) * py + (vy - cy + ry)) * px
                                                + (vx - cx + rx), centre_col]
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
                            pb = window_patches[((vz - cz + rz) * py + (vy - cy + ry)) * px
                                                + (vx - cx + rx), centre_col]
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
def _scores_kernel(window_patches, window_start, vmask, vidx, ccoord, i0, i1, rz, ry, rx, th,
                   bg, ring, ring_rows, band_rows, cls_scratch, term_scratch, scores, n_high,
                   n_low):
    """Score, |H_c| and |L_c| of the candidates i0 .. i1 - 1, one thread block per candidate.

    The block's threads classify the patch (``cls_scratch``: 1 in H_c, -1 in L_c, else 0),
    then compute each pixel u's term (its pairs with the later v: +C for both in H, -C for
    one in H and one in L; float64, by patch plane), and one thread adds the terms up in the
    CPU pass's order: by bands of ``band_rows`` image rows, within a band by (y, z, x).
    """
    Z, Y, X = vmask.shape
    pz, py, px = 2 * rz + 1, 2 * ry + 1, 2 * rx + 1
    P = pz * py * px
    fy, fx = 4 * ry + 1, 4 * rx + 1
    half = ((4 * rz + 1) * fy * fx - 1) // 2
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    block = cuda.blockIdx.x
    for i in range(i0 + block, i1, cuda.gridDim.x):
        cz, cy, cx = ccoord[i, 0], ccoord[i, 1], ccoord[i, 2]
        centre_col = (cz * Y + cy) * X + cx - window_start
        for k in range(tid, P, n_threads):
            z = cz + k // (py * px) - rz
            y = cy + (k // px) % py - ry
            x = cx + k % px - rx
            c = 0
            if 0 <= z < Z and 0 <= y < Y and 0 <= x < X and vmask[z, y, x] != 0:
                p = window_patches[k, centre_col]
                if p > th:
                    c = 1
                elif p < bg:
                    c = -1
            cls_scratch[block, k] = c
        cuda.syncthreads()
        for ka in range(tid, P, n_threads):
            ca = cls_scratch[block, ka]
            t = 0.0
            if ca != 0:
                za, ya, xa = ka // (py * px), (ka // px) % py, ka % px
                slot = vidx[cz + za - rz, cy + ya - ry, cx + xa - rx] % ring_rows
                for zb in range(za, pz):
                    acc = 0.0
                    for yb in range(py):
                        for xb in range(px):
                            kb = (zb * py + yb) * px + xb
                            if kb <= ka:
                                continue
                            cb = cls_scratch[block, kb]
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
            term_scratch[block, ka] = t
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
                        c = cls_scratch[block, k]
                        if c != 0:
                            part += term_scratch[block, k]
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
