"""numba kernels of the instance assembly.

Common preconditions (guaranteed by the wrappers in ``assemble.py``):

- Everything is 3D: a 2D problem is a 3D one with Z = 1 and a patch depth of 1.
- ``patches`` is C-contiguous float32 of shape (P, N), N = Z * Y * X (unpadded raster order).
- Masks and index maps (``vmask``, ``fgmask``, ``vidx``, ``covered``) live on the grid padded
  by the patch radius ``r`` on every side, shape (Z + 2 rz, Y + 2 ry, X + 2 rx), and are zero
  (or -1 for ``vidx``) in the padding, so patch loops need no bounds checks.
- ``offs`` (P, 3) int64 holds the patch offsets ``o_k`` in C order (``o_k = k - r`` per axis).
- ``centres`` (n, 3) int64 holds unpadded centre coordinates; the pixel ``c + o_k`` lives at
  padded coordinate ``c + o_k + r``.
- Consensus rows: one row per voting pixel (``vidx``), one column per positive offset
  ``d`` in ``[-2r, 2r]`` (raster order after the zero offset): ``col(d) = ravel(d + 2r) - h - 1``
  with ``h = (prod(4r + 1) - 1) // 2``. A pair {u, v} is stored in the row of the pixel that
  comes first in raster order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

@njit(cache=True, nogil=True)
def _dense_patch(patches, c, cflat, offs, r, vmask, vidx, th, bg, vals, w_high, w_low,
                 n_any, n_high, rows, entries, span):
    """Dense view of the patch at ``c`` for the vectorised pair loops.

    Fills, per patch index k: ``vals`` (the patch value), ``w_high`` / ``w_low`` (float32
    1 if the pixel is in H_c / L_c, else 0), ``n_any`` / ``n_high`` (the same as uint16
    vote counts: in H_c or L_c / in H_c) and ``rows`` (the pixel's consensus row); the patch
    indices of the pixels in H_c or L_c go to ``entries`` in raster order. ``span[line]``
    gets the first and one-past-last x of the voting pixels (columns 0, 1) and of the H_c
    pixels (columns 2, 3) on each patch line, so the pair loops can skip the rest.
    Returns (n entries, |H_c|).
    """
    n = 0
    nh = 0
    for line in range(span.shape[0]):
        span[line, 0] = 1 << 30
        span[line, 1] = 0
        span[line, 2] = 1 << 30
        span[line, 3] = 0
    width = offs.shape[0] // span.shape[0]
    for k in range(offs.shape[0]):
        z = c[0] + offs[k, 0] + r[0]
        y = c[1] + offs[k, 1] + r[1]
        x = c[2] + offs[k, 2] + r[2]
        p = patches[k, cflat]
        vals[k] = p
        w_high[k] = 0.0
        w_low[k] = 0.0
        n_any[k] = 0
        n_high[k] = 0
        rows[k] = vidx[z, y, x]
        if vmask[z, y, x] == 0:
            continue
        line = k // width
        xk = k - line * width
        if p > th:
            w_high[k] = 1.0
            n_high[k] = 1
            nh += 1
            span[line, 2] = min(span[line, 2], xk)
            span[line, 3] = xk + 1
        elif p < bg:
            w_low[k] = 1.0
        else:
            continue
        span[line, 0] = min(span[line, 0], xk)
        span[line, 1] = xk + 1
        n_any[k] = 1
        entries[n] = k
        n += 1
    return n, nh


@njit(cache=True, nogil=True, inline="always")
def _line_column(za, ya, xa, zb, yb, pshape, fshape, half):
    """Consensus column of the pair (a, b) with b at x = 0 of patch line (zb, yb).

    Adding b's x gives the column of any b on that line: the offsets o_b - o_a of one line
    are consecutive in the column order.
    """
    return ((((zb - za + 2 * (pshape[0] // 2)) * fshape[1] + (yb - ya + 2 * (pshape[1] // 2)))
             * fshape[2]) + (2 * (pshape[2] // 2) - xa) - half - 1)


@njit(cache=True, nogil=True, fastmath=True)
def _votes_of_patch(pshape, fshape, half, th2, inv_norm, vals, w_high, w_low, n_any, n_high,
                    rows, entries, n, span, csum, ccnt):
    """Add one patch's votes for all its pairs (u before v in raster order).

    The inner loop runs over one line of the patch, whose pairs with ``u`` occupy
    consecutive consensus columns, so it is branch-free and vectorises.
    """
    pz, py, px = pshape[0], pshape[1], pshape[2]
    one = np.float32(1.0)
    for e in range(n):
        ka = entries[e]
        za = ka // (py * px)
        ya = (ka // px) % py
        xa = ka % px
        srow = csum[rows[ka]]
        crow = ccnt[rows[ka]]
        pa = vals[ka]
        high_a = n_high[ka] == 1
        for zb in range(za, pz):
            ystart = ya if zb == za else 0
            for yb in range(ystart, py):
                xstart = xa + 1 if (zb == za and yb == ya) else 0
                kb0 = (zb * py + yb) * px
                cb = _line_column(za, ya, xa, zb, yb, pshape, fshape, half)
                line = zb * py + yb
                if high_a:
                    for xb in range(max(xstart, span[line, 0]), span[line, 1]):
                        kb = kb0 + xb
                        pb = vals[kb]
                        v = (w_high[kb] * (pa * pb - th2) - w_low[kb] * (pa * (one - pb) - th2))
                        srow[cb + xb] += v * inv_norm
                        crow[cb + xb] += n_any[kb]
                else:
                    for xb in range(max(xstart, span[line, 2]), span[line, 3]):
                        kb = kb0 + xb
                        v = -(w_high[kb] * (vals[kb] * (one - pa) - th2))
                        srow[cb + xb] += v * inv_norm
                        crow[cb + xb] += n_high[kb]


@njit(cache=True, parallel=True)
def accumulate_votes(patches, centres, cflat, stripes, parity, offs, r, pshape, fshape, half,
                     vmask, vidx, th, bg, csum, ccnt):
    """Add the votes of every centre to ``csum`` / ``ccnt`` (consensus step).

    ``centres`` are sorted by y and grouped into stripes of at least ``2 * ry`` rows
    (``stripes`` holds the start index of each stripe, plus the end). Stripes of one parity
    write disjoint consensus rows, so they run in parallel without races; call once with
    ``parity=0`` and once with ``parity=1``. A pair is stored in the row of its first pixel
    in raster order.
    """
    P = offs.shape[0]
    th2 = np.float32(th * th)
    inv_norm = np.float32(1.0 / (1.0 - th * th))
    n_stripes = stripes.shape[0] - 1
    for s2 in prange((n_stripes + 1 - parity) // 2):
        s = 2 * s2 + parity
        vals = np.empty(P, np.float32)
        w_high = np.empty(P, np.float32)
        w_low = np.empty(P, np.float32)
        n_any = np.empty(P, np.uint16)
        n_high = np.empty(P, np.uint16)
        rows = np.empty(P, np.int64)
        entries = np.empty(P, np.int64)
        span = np.empty((pshape[0] * pshape[1], 4), np.int64)
        for i in range(stripes[s], stripes[s + 1]):
            n, nh = _dense_patch(patches, centres[i], cflat[i], offs, r, vmask, vidx, th, bg,
                                 vals, w_high, w_low, n_any, n_high, rows, entries, span)
            _votes_of_patch(pshape, fshape, half, th2, inv_norm, vals, w_high, w_low, n_any,
                            n_high, rows, entries, n, span, csum, ccnt)


@njit(cache=True, parallel=True)
def finalize_consensus(csum, ccnt):
    """Turn vote sums into means in place (0 where a pair received no vote)."""
    for i in prange(csum.shape[0]):
        for j in range(csum.shape[1]):
            if ccnt[i, j] > 0:
                csum[i, j] = csum[i, j] / ccnt[i, j]
            else:
                csum[i, j] = 0.0


@njit(cache=True, parallel=True)
def mark_undefined(cons, ccnt):
    """Set the consensus of pairs without any vote to NaN."""
    for i in prange(cons.shape[0]):
        for j in range(cons.shape[1]):
            if ccnt[i, j] == 0:
                cons[i, j] = np.nan


@njit(cache=True, nogil=True, fastmath=True)
def _score_of_patch(pshape, fshape, half, w_high, w_low, n_high, rows, entries, n, span, cons):
    """Sum of +C (both in H_c) and -C (one in H_c, one in L_c) over a patch's pairs.

    Every such pair received a vote from this very patch, so its C is defined.
    """
    pz, py, px = pshape[0], pshape[1], pshape[2]
    total = 0.0
    for e in range(n):
        ka = entries[e]
        za = ka // (py * px)
        ya = (ka // px) % py
        xa = ka % px
        crow = cons[rows[ka]]
        high_a = n_high[ka] == 1
        acc = np.float32(0.0)
        for zb in range(za, pz):
            ystart = ya if zb == za else 0
            for yb in range(ystart, py):
                xstart = xa + 1 if (zb == za and yb == ya) else 0
                kb0 = (zb * py + yb) * px
                cb = _line_column(za, ya, xa, zb, yb, pshape, fshape, half)
                line = zb * py + yb
                if high_a:
                    for xb in range(max(xstart, span[line, 0]), span[line, 1]):
                        kb = kb0 + xb
                        acc += (w_high[kb] - w_low[kb]) * crow[cb + xb]
                else:
                    for xb in range(max(xstart, span[line, 2]), span[line, 3]):
                        acc -= w_high[kb0 + xb] * crow[cb + xb]
        total += acc
    return total


@njit(cache=True, parallel=True)
def patch_scores(patches, centres, cflat, offs, r, pshape, fshape, half, vmask, vidx, th, bg,
                 cons, out, out_high):
    """Score every candidate patch: mean of +C (together) and -C (apart) over its pairs.

    Also writes the size of its high region H_c to ``out_high`` (the ranking's tie-break).
    """
    P = offs.shape[0]
    for i in prange(centres.shape[0]):
        vals = np.empty(P, np.float32)
        w_high = np.empty(P, np.float32)
        w_low = np.empty(P, np.float32)
        n_any = np.empty(P, np.uint16)
        n_high = np.empty(P, np.uint16)
        rows = np.empty(P, np.int64)
        entries = np.empty(P, np.int64)
        span = np.empty((pshape[0] * pshape[1], 4), np.int64)
        n, nh = _dense_patch(patches, centres[i], cflat[i], offs, r, vmask, vidx, th, bg,
                             vals, w_high, w_low, n_any, n_high, rows, entries, span)
        nl = n - nh
        count = nh * (nh - 1) // 2 + nh * nl
        if count == 0:
            out[i] = -1.0
        else:
            out[i] = _score_of_patch(pshape, fshape, half, w_high, w_low, n_high, rows,
                                     entries, n, span, cons) / count
        out_high[i] = nh


@njit(cache=True)
def foreground_cover(patches, centres, cflat, offs, r, fgmask, fc, covered, selected):
    """Greedy foreground cover over ranked centres; returns the number selected.

    ``covered`` (padded, uint8, zero on entry) is updated; the positions (into
    ``centres``) of the selected patches are written to ``selected``.
    """
    P = offs.shape[0]
    m = 0
    for i in range(centres.shape[0]):
        c = centres[i]
        new = False
        for k in range(P):
            z = c[0] + offs[k, 0] + r[0]
            y = c[1] + offs[k, 1] + r[1]
            x = c[2] + offs[k, 2] + r[2]
            if fgmask[z, y, x] != 0 and covered[z, y, x] == 0 and patches[k, cflat[i]] > fc:
                new = True
                break
        if not new:
            continue
        for k in range(P):
            z = c[0] + offs[k, 0] + r[0]
            y = c[1] + offs[k, 1] + r[1]
            x = c[2] + offs[k, 2] + r[2]
            if fgmask[z, y, x] != 0 and patches[k, cflat[i]] > fc:
                covered[z, y, x] = 1
        selected[m] = i
        m += 1
    return m


@njit(cache=True)
def candidate_edges(centres, patchshape):
    """Pairs (a < b) of centres closer than ``2 * patchshape`` on every axis.

    ``centres`` must be sorted by y, then any order; returns an (E, 2) int64 array.
    """
    n = centres.shape[0]
    cap = 16 * n + 16
    out = np.empty((cap, 2), np.int64)
    e = 0
    order = np.argsort(centres[:, 1], kind="mergesort")
    for ii in range(n):
        a = order[ii]
        for jj in range(ii + 1, n):
            b = order[jj]
            if centres[b, 1] - centres[a, 1] >= 2 * patchshape[1]:
                break
            if (abs(centres[b, 0] - centres[a, 0]) < 2 * patchshape[0]
                    and abs(centres[b, 2] - centres[a, 2]) < 2 * patchshape[2]):
                if e == out.shape[0]:
                    bigger = np.empty((2 * out.shape[0], 2), np.int64)
                    bigger[:e] = out[:e]
                    out = bigger
                out[e, 0] = min(a, b)
                out[e, 1] = max(a, b)
                e += 1
    return out[:e]


@njit(cache=True, parallel=True)
def high_masks(patches, centres, cflat, offs, r, vmask, th, stride, hmask, hspan):
    """H_c of every selected patch as a mask over its box, and its extent per patch line.

    ``hmask[i, k]`` (uint8) is 1 where pixel ``c_i + o_k`` is a voting pixel with
    ``P > th`` (with ``stride > 1``: only pixels whose coordinates are all multiples of
    ``stride``). ``hspan[i, line]`` gets the first and one-past-last x (patch coordinates)
    of the mask on each patch line (first > last when the line is empty).
    """
    px = offs.shape[0] // hspan.shape[1]
    for i in prange(centres.shape[0]):
        for line in range(hspan.shape[1]):
            hspan[i, line, 0] = px
            hspan[i, line, 1] = 0
        for k in range(offs.shape[0]):
            z = centres[i, 0] + offs[k, 0]
            y = centres[i, 1] + offs[k, 1]
            x = centres[i, 2] + offs[k, 2]
            hmask[i, k] = 0
            if stride > 1 and (z % stride != 0 or y % stride != 0 or x % stride != 0):
                continue
            if vmask[z + r[0], y + r[1], x + r[2]] != 0 and patches[k, cflat[i]] > th:
                hmask[i, k] = 1
                line = k // px
                xk = k - line * px
                hspan[i, line, 0] = min(hspan[i, line, 0], xk)
                hspan[i, line, 1] = xk + 1


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _later_sum(u, row, cb, hmask_b, hspan_b, r, fshape, half):
    """Sum and number of the defined C(u, v) over v in H_b after u in raster order.

    ``row`` is u's consensus row (NaN where undefined), ``cb`` the centre of b. Only the
    patch lines of b within ``2 r`` of u are visited, each over the x-extent of H_b on it
    clipped to ``u_x +- 2 r_x``: one contiguous run of consensus columns per line.
    """
    pz, py, px = 2 * r[0] + 1, 2 * r[1] + 1, 2 * r[2] + 1
    total = 0.0
    count = 0
    z0 = cb[0] - r[0]
    y0 = cb[1] - r[1]
    x0 = cb[2] - r[2]
    for zl in range(max(0, u[0] - z0), min(pz, u[0] + 2 * r[0] - z0 + 1)):
        dz = z0 + zl - u[0]
        ylo = max(0, u[1] - 2 * r[1] - y0)
        if dz == 0:
            ylo = max(ylo, u[1] - y0)
        for yl in range(ylo, min(py, u[1] + 2 * r[1] - y0 + 1)):
            dy = y0 + yl - u[1]
            line = zl * py + yl
            lo = max(hspan_b[line, 0], u[2] - 2 * r[2] - x0)
            if dz == 0 and dy == 0:
                lo = max(lo, u[2] - x0 + 1)
            hi = min(hspan_b[line, 1], u[2] + 2 * r[2] - x0 + 1)
            # column of v = (z0 + zl, y0 + yl, x0 + xl): base + xl
            base = ((dz + 2 * r[0]) * fshape[1] + (dy + 2 * r[1])) * fshape[2] \
                + x0 - u[2] + 2 * r[2] - half - 1
            k0 = line * px
            for xl in range(lo, hi):
                value = row[base + xl]
                if hmask_b[k0 + xl] != 0 and value == value:
                    total += value
                    count += 1
    return total, count


@njit(cache=True, parallel=True)
def edge_weight_parts(centres, offs, hmask, hspan, nbr_start, nbr_node, nbr_slot, vidx, r,
                      fshape, half, cons, part_sum, part_cnt):
    """Per node b, the sums over its neighbours a of the defined C(u, v), u in H_a, v in H_b,
    v after u in raster order; written to ``part_sum[nbr_slot[j]]`` / ``part_cnt``.

    The neighbours of b are ``nbr_node[nbr_start[b]:nbr_start[b + 1]]``. The sum over v of a
    pixel u (``T_b(u)``) is computed once per node and reused for every neighbour whose H
    holds u (neighbouring patches overlap), in a scratch grid over ``c_b +- 3 r`` (a pixel
    farther from c_b has no v within ``2 r``). ``vidx`` is the padded row map.
    """
    P = offs.shape[0]
    gz, gy, gx = 6 * r[0] + 1, 6 * r[1] + 1, 6 * r[2] + 1
    for b in prange(centres.shape[0]):
        if nbr_start[b] == nbr_start[b + 1]:
            continue
        tsum = np.empty((gz, gy, gx), np.float64)
        tcnt = np.empty((gz, gy, gx), np.int64)
        done = np.zeros((gz, gy, gx), np.uint8)
        cb = centres[b]
        u = np.empty(3, np.int64)
        for j in range(nbr_start[b], nbr_start[b + 1]):
            a = nbr_node[j]
            total = 0.0
            count = 0
            for k in range(P):
                if hmask[a, k] == 0:
                    continue
                u[0] = centres[a, 0] + offs[k, 0]
                u[1] = centres[a, 1] + offs[k, 1]
                u[2] = centres[a, 2] + offs[k, 2]
                qz = u[0] - cb[0] + 3 * r[0]
                qy = u[1] - cb[1] + 3 * r[1]
                qx = u[2] - cb[2] + 3 * r[2]
                if qz < 0 or qz >= gz or qy < 0 or qy >= gy or qx < 0 or qx >= gx:
                    continue
                if done[qz, qy, qx] == 0:
                    row = cons[vidx[u[0] + r[0], u[1] + r[1], u[2] + r[2]]]
                    t, c = _later_sum(u, row, cb, hmask[b], hspan[b], r, fshape, half)
                    tsum[qz, qy, qx] = t
                    tcnt[qz, qy, qx] = c
                    done[qz, qy, qx] = 1
                total += tsum[qz, qy, qx]
                count += tcnt[qz, qy, qx]
            part_sum[nbr_slot[j]] = total
            part_cnt[nbr_slot[j]] = count


@njit(cache=True)
def paint_labels(patches, centres, cflat, comp, offs, r, mask, th, labels):
    """Paint {P > th} & mask of each patch with its component id, in the given order."""
    P = offs.shape[0]
    for i in range(centres.shape[0]):
        c = centres[i]
        for k in range(P):
            z = c[0] + offs[k, 0] + r[0]
            y = c[1] + offs[k, 1] + r[1]
            x = c[2] + offs[k, 2] + r[2]
            if mask[z, y, x] != 0 and patches[k, cflat[i]] > th:
                labels[z, y, x] = comp[i]


@njit(cache=True)
def paint_masks(patches, centres, cflat, comp, offs, r, mask, th, masks):
    """Union of {P > th} & mask of each patch into the mask of its component (id - 1)."""
    P = offs.shape[0]
    for i in range(centres.shape[0]):
        c = centres[i]
        for k in range(P):
            z = c[0] + offs[k, 0] + r[0]
            y = c[1] + offs[k, 1] + r[1]
            x = c[2] + offs[k, 2] + r[2]
            if mask[z, y, x] != 0 and patches[k, cflat[i]] > th:
                masks[comp[i] - 1, z, y, x] = 1


@njit(cache=True)
def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:
        nxt = parent[a]
        parent[a] = root
        a = nxt
    return root


@njit(cache=True)
def connected_components(n, edges, weights):
    """Union-find over edges with weight > 0; returns the root of every node."""
    parent = np.arange(n)
    for e in range(edges.shape[0]):
        if weights[e] > 0:
            ra = _find(parent, edges[e, 0])
            rb = _find(parent, edges[e, 1])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    for i in range(n):
        parent[i] = _find(parent, i)
    return parent
