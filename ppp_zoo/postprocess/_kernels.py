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

_NOT = 0
_HIGH = 1
_LOW = 2


@njit(cache=True, nogil=True)
def _patch_entries(patches, c, cflat, offs, r, vmask, th, bg, ks, vals, kinds):
    """Collect the voting entries of the patch at ``c`` in patch order.

    Writes patch index, value and kind (_HIGH or _LOW) of every voting pixel into the
    preallocated ``ks``, ``vals``, ``kinds`` and returns how many there are.
    """
    n = 0
    for k in range(offs.shape[0]):
        z = c[0] + offs[k, 0] + r[0]
        y = c[1] + offs[k, 1] + r[1]
        x = c[2] + offs[k, 2] + r[2]
        if vmask[z, y, x] == 0:
            continue
        p = patches[k, cflat]
        if p > th:
            kinds[n] = _HIGH
        elif p < bg:
            kinds[n] = _LOW
        else:
            continue
        ks[n] = k
        vals[n] = p
        n += 1
    return n


@njit(cache=True, nogil=True)
def _vote(pa, pb, ka, kb, th2, norm):
    """Vote of one centre for the pair (a, b) given their kinds; NaN when it does not vote."""
    if ka == _HIGH:
        if kb == _HIGH:
            return (pa * pb - th2) / norm
        return -(pa * (1.0 - pb) - th2) / norm
    if kb == _HIGH:
        return -(pb * (1.0 - pa) - th2) / norm
    return np.nan


@njit(cache=True, parallel=True)
def accumulate_votes(patches, centres, cflat, stripes, parity, offs, r, vmask, vidx, pairtab,
                     th, bg, csum, ccnt):
    """Add the votes of every centre to ``csum`` / ``ccnt`` (consensus step).

    ``centres`` are sorted by y and grouped into stripes of at least ``2 * ry`` rows
    (``stripes`` holds the start index of each stripe, plus the end). Stripes of one parity
    write disjoint consensus rows, so they run in parallel without races; call once with
    ``parity=0`` and once with ``parity=1``.
    """
    P = offs.shape[0]
    th2 = th * th
    norm = 1.0 - th2
    n_stripes = stripes.shape[0] - 1
    for s2 in prange((n_stripes + 1 - parity) // 2):
        s = 2 * s2 + parity
        ks = np.empty(P, np.int64)
        vals = np.empty(P, np.float32)
        kinds = np.empty(P, np.uint8)
        for i in range(stripes[s], stripes[s + 1]):
            c = centres[i]
            n = _patch_entries(patches, c, cflat[i], offs, r, vmask, th, bg, ks, vals, kinds)
            for a in range(n):
                ka = ks[a]
                row = vidx[c[0] + offs[ka, 0] + r[0], c[1] + offs[ka, 1] + r[1],
                           c[2] + offs[ka, 2] + r[2]]
                pa = vals[a]
                kia = kinds[a]
                for b in range(a + 1, n):
                    v = _vote(pa, vals[b], kia, kinds[b], th2, norm)
                    if v == v:
                        col = pairtab[ka, ks[b]]
                        csum[row, col] += v
                        ccnt[row, col] += 1


@njit(cache=True, parallel=True)
def finalize_consensus(csum, ccnt):
    """Turn vote sums into means in place; entries without votes become NaN."""
    for i in prange(csum.shape[0]):
        for j in range(csum.shape[1]):
            if ccnt[i, j] > 0:
                csum[i, j] = csum[i, j] / ccnt[i, j]
            else:
                csum[i, j] = np.nan


@njit(cache=True, parallel=True)
def patch_scores(patches, centres, cflat, offs, r, vmask, vidx, pairtab, th, bg, cons, out,
                 n_high):
    """Score every candidate patch: mean of +C (together) and -C (apart) over its pairs.

    Also writes the size of its high region H_c to ``n_high`` (the ranking's tie-break).
    """
    P = offs.shape[0]
    for i in prange(centres.shape[0]):
        ks = np.empty(P, np.int64)
        vals = np.empty(P, np.float32)
        kinds = np.empty(P, np.uint8)
        c = centres[i]
        n = _patch_entries(patches, c, cflat[i], offs, r, vmask, th, bg, ks, vals, kinds)
        total = 0.0
        count = 0
        high = 0
        for a in range(n):
            ka = ks[a]
            row = vidx[c[0] + offs[ka, 0] + r[0], c[1] + offs[ka, 1] + r[1],
                       c[2] + offs[ka, 2] + r[2]]
            kia = kinds[a]
            if kia == _HIGH:
                high += 1
            for b in range(a + 1, n):
                kib = kinds[b]
                if kia == _LOW and kib == _LOW:
                    continue
                value = cons[row, pairtab[ka, ks[b]]]
                if value != value:
                    continue
                if kia == _HIGH and kib == _HIGH:
                    total += value
                else:
                    total -= value
                count += 1
        out[i] = total / count if count > 0 else -1.0
        n_high[i] = high


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
def edge_weights(patches, centres, cflat, edges, offs, r, vmask, vidx, fullshape, half,
                 th, cons, out):
    """Mean consensus over pixel pairs (u in H_a, v in H_b) for every edge; NaN if none."""
    P = offs.shape[0]
    for e in prange(edges.shape[0]):
        a = edges[e, 0]
        b = edges[e, 1]
        ka = np.empty(P, np.int64)
        kb = np.empty(P, np.int64)
        na = 0
        nb = 0
        for k in range(P):
            z = centres[a, 0] + offs[k, 0] + r[0]
            y = centres[a, 1] + offs[k, 1] + r[1]
            x = centres[a, 2] + offs[k, 2] + r[2]
            if vmask[z, y, x] != 0 and patches[k, cflat[a]] > th:
                ka[na] = k
                na += 1
            z = centres[b, 0] + offs[k, 0] + r[0]
            y = centres[b, 1] + offs[k, 1] + r[1]
            x = centres[b, 2] + offs[k, 2] + r[2]
            if vmask[z, y, x] != 0 and patches[k, cflat[b]] > th:
                kb[nb] = k
                nb += 1
        total = 0.0
        count = 0
        for i in range(na):
            # u = a + o_ka ; v = b + o_kb ; d = v - u
            uz = centres[a, 0] + offs[ka[i], 0]
            uy = centres[a, 1] + offs[ka[i], 1]
            ux = centres[a, 2] + offs[ka[i], 2]
            for j in range(nb):
                dz = centres[b, 0] + offs[kb[j], 0] - uz
                dy = centres[b, 1] + offs[kb[j], 1] - uy
                dx = centres[b, 2] + offs[kb[j], 2] - ux
                if abs(dz) > 2 * r[0] or abs(dy) > 2 * r[1] or abs(dx) > 2 * r[2]:
                    continue
                g = ((dz + 2 * r[0]) * fullshape[1] + (dy + 2 * r[1])) * fullshape[2] + dx + 2 * r[2]
                if g > half:
                    row = vidx[uz + r[0], uy + r[1], ux + r[2]]
                    col = g - half - 1
                elif g < half:
                    row = vidx[uz + dz + r[0], uy + dy + r[1], ux + dx + r[2]]
                    col = half - g - 1
                else:
                    continue
                value = cons[row, col]
                if value == value:
                    total += value
                    count += 1
        out[e] = total / count if count > 0 else np.nan


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
