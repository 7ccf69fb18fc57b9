"""CUDA kernels of assembly steps 3-5: the foreground cover (which patches are selected),
the candidate edges, the H masks of the selected patches and the edge weights (run by the
host functions of ``_cuda_kernels.py``).

The integer helpers are defined here again, not imported from ``_cuda_consensus.py``:
numba's cache of a kernel notices changes to the kernel's own file only.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._cuda_consensus import _device


# --------------------------------------------------------------------------- device functions
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


# --------------------------------------------------------------------------- kernels
@cuda.jit(cache=True)
def _footprint_kernel(window_patches, window_start, items, centres, fg, rz, ry, rx, fc, bits):
    """Bit k of ``bits[i]`` (32 per word): pixel c_i + o_k is foreground with P > fc, for
    the items (indices into ``centres``) whose patches are in ``window_patches``."""
    Z, Y, X = fg.shape
    py, px = 2 * ry + 1, 2 * rx + 1
    P = (2 * rz + 1) * py * px
    W = bits.shape[1]
    for idx in range(cuda.grid(1), items.shape[0] * W, cuda.gridsize(1)):
        t = idx // W
        w = idx - t * W
        i = items[t]
        cz, cy, cx = centres[i, 0], centres[i, 1], centres[i, 2]
        centre_col = (cz * Y + cy) * X + cx - window_start
        word = 0
        for k in range(32 * w, _imin(32 * w + 32, P)):
            z = cz + k // (py * px) - rz
            y = cy + (k // px) % py - ry
            x = cx + k % px - rx
            if 0 <= z < Z and 0 <= y < Y and 0 <= x < X and fg[z, y, x] != 0 \
                    and window_patches[k, centre_col] > fc:
                word |= 1 << (k - 32 * w)
        bits[i, w] = word


@cuda.jit(cache=True)
def _cover_kernel(centres, bits, rz, ry, rx, covered, selected, n_selected):
    """Greedy foreground cover in ranking order, by one thread block: a patch is selected
    when its footprint holds a pixel not yet covered, then covers its footprint."""
    py, px = 2 * ry + 1, 2 * rx + 1
    P = (2 * rz + 1) * py * px
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    m = 0
    for i in range(centres.shape[0]):
        cz, cy, cx = centres[i, 0], centres[i, 1], centres[i, 2]
        new = np.int32(0)
        for k in range(tid, P, n_threads):
            if (bits[i, k // 32] >> (k % 32)) & 1:
                if covered[cz + k // (py * px) - rz, cy + (k // px) % py - ry,
                           cx + k % px - rx] == 0:
                    new = np.int32(1)
        if cuda.syncthreads_or(new):
            for k in range(tid, P, n_threads):
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
    """Number of later centres (in y order) at most 2 * patchshape - 2 apart on every axis."""
    n = order.shape[0]
    for ii in range(cuda.grid(1), n, cuda.gridsize(1)):
        a = order[ii]
        c = 0
        for jj in range(ii + 1, n):
            b = order[jj]
            if centres[b, 1] - centres[a, 1] >= 2 * py - 1:
                break
            if _iabs(centres[b, 0] - centres[a, 0]) < 2 * pz - 1 \
                    and _iabs(centres[b, 2] - centres[a, 2]) < 2 * px - 1:
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
            if centres[b, 1] - centres[a, 1] >= 2 * py - 1:
                break
            if _iabs(centres[b, 0] - centres[a, 0]) < 2 * pz - 1 \
                    and _iabs(centres[b, 2] - centres[a, 2]) < 2 * px - 1:
                edges[e, 0] = _imin(a, b)
                edges[e, 1] = _imax(a, b)
                e += 1


@cuda.jit(cache=True)
def _high_masks_kernel(window_patches, window_start, nodes, centres, vmask, rz, ry, rx, th,
                       hmask, hspan):
    """H mask and per-line x extent of the nodes (indices into ``centres``) whose patches are
    in ``window_patches``, one thread per (node, patch line); as ``_kernels.high_masks``."""
    Z, Y, X = vmask.shape
    py, px = 2 * ry + 1, 2 * rx + 1
    L = (2 * rz + 1) * py
    for idx in range(cuda.grid(1), nodes.shape[0] * L, cuda.gridsize(1)):
        t = idx // L
        line = idx - t * L
        b = nodes[t]
        cz, cy, cx = centres[b, 0], centres[b, 1], centres[b, 2]
        centre_col = (cz * Y + cy) * X + cx - window_start
        z = cz + line // py - rz
        y = cy + line % py - ry
        first = px
        last = 0
        for xk in range(px):
            k = line * px + xk
            x = cx + xk - rx
            h = 0
            if 0 <= z < Z and 0 <= y < Y and 0 <= x < X and vmask[z, y, x] != 0:
                if window_patches[k, centre_col] > th:
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
