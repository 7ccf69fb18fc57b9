"""numba kernels of the instance assembly.

Common preconditions (guaranteed by the wrappers in ``assembly.py``):

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

import numba
import numpy as np
from numba import njit, prange

from . import _portable

#: pixels per tile of the consensus pass (see :func:`_consensus_of_row`)
TILE = 8


def n_threads() -> int:
    """Number of threads numba's parallel kernels use."""
    return numba.get_num_threads()


@njit(cache=True, nogil=True)
def _load_centre_row(patches, cy, row_start, cand, cflat, offs, r, fshape, vmask, th, bg, ring,
                     ring_cls, ring_span, n_high, n_low):
    """Pitched dense copies of the patches of the candidates on centre row ``cy``.

    The patch of the j-th candidate c of the row goes to ``ring[j]`` with patch pixel
    (z, y, x) at ``z * py * Fx + y * Fx + x``, ``Fx = 4 rx + 1`` (the consensus column pitch,
    so that the pairs of a pixel with the later pixels of one patch plane are one run of
    consecutive positions and columns). The value is P_c(c + o_k) where that pixel votes
    (class 1), else NaN (neither in H_c nor in L_c; the inputs are finite), and NaN in the
    gaps. ``ring_cls`` gets the same layout as int8 classes: 1 in H_c, -1 in L_c, else 0.
    ``ring_span[j, z]`` gets the first and one-past-last position (within the plane) of
    the pixels in H_c or L_c (columns 0, 1) and in H_c (columns 2, 3) of each patch plane;
    ``n_high[i]`` / ``n_low[i]`` get |H_c| and |L_c| (i: the candidate's index).
    """
    P = offs.shape[0]
    py, px = 2 * r[1] + 1, 2 * r[2] + 1
    plane = py * fshape[2]
    i0, n = row_start[cy], row_start[cy + 1] - row_start[cy]
    ring[:n] = np.nan
    ring_cls[:n] = 0
    ring_span[:n, :, 0] = plane
    ring_span[:n, :, 1] = 0
    ring_span[:n, :, 2] = plane
    ring_span[:n, :, 3] = 0
    n_high[i0:i0 + n] = 0
    n_low[i0:i0 + n] = 0
    # offsets outer, centres inner: the centres of a row are neighbours in every channel
    for k in range(P):
        zk = k // (py * px)
        pos = ((k // px) % py) * fshape[2] + k % px
        for j in range(n):
            i = i0 + j
            z = cand[i, 0] + offs[k, 0] + r[0]
            y = cand[i, 1] + offs[k, 1] + r[1]
            x = cand[i, 2] + offs[k, 2] + r[2]
            if vmask[z, y, x] == 0:
                continue
            p = patches[k, cflat[i]]
            ring[j, zk * plane + pos] = p
            if p > th:
                ring_span[j, zk, 2] = min(ring_span[j, zk, 2], pos)
                ring_span[j, zk, 3] = max(ring_span[j, zk, 3], pos + 1)
                n_high[i] += 1
                ring_cls[j, zk * plane + pos] = 1
            elif p < bg:
                n_low[i] += 1
                ring_cls[j, zk * plane + pos] = -1
            else:
                continue
            ring_span[j, zk, 0] = min(ring_span[j, zk, 0], pos)
            ring_span[j, zk, 1] = max(ring_span[j, zk, 1], pos + 1)


#: fast-math flags of the vote loops: everything but the no-NaN assumption (NaN marks the
#: pixels of a patch that do not vote)
_VOTE_MATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, parallel=True, nogil=True)
def start_threads(out):
    """A trivial parallel kernel: its first launch makes numba choose its threading layer."""
    for i in prange(out.shape[0]):
        out[i] = i


@njit(cache=True, nogil=True, inline="always")
def _run_column(za, zb, ya, xa, pshape, fshape, half):
    """Consensus column of the pair (a, b) minus b's position in its pitched patch plane."""
    return (((zb - za + 2 * (pshape[0] // 2)) * fshape[1] + (2 * (pshape[1] // 2) - ya))
            * fshape[2]) + (2 * (pshape[2] // 2) - xa) - half - 1


@njit(cache=True, nogil=True, fastmath=_VOTE_MATH)
def _votes_with_centre(ka, buf, span, pshape, fshape, half, th, bg, th2, inv_norm, srow, crow):
    """Add the votes of one centre for the pairs (u, v), v after u, to u's row.

    ``ka`` is u's index in the centre's patch, ``buf`` / ``span`` the centre's pitched patch
    (see :func:`_load_centre_row`); ``srow`` is u's consensus row (vote sums), ``crow`` its
    vote counts. One branch-free loop per patch plane (0-based, over slices, so that it
    vectorises); gap and non-voting positions add zero. The vote of a pair is computed as
    the per-patch formulation does, so every sum is the same float32 sequence.
    """
    py, px = pshape[1], pshape[2]
    plane = py * fshape[2]
    one = np.float32(1.0)
    pa_pos = ((ka // px) % py) * fshape[2] + ka % px
    za = ka // (py * px)
    pa = buf[za * plane + pa_pos]
    if pa > th:
        high_a = True
    elif pa < bg:
        high_a = False
    else:
        return
    ya = (ka // px) % py
    xa = ka % px
    for zb in range(za, pshape[0]):
        col_base = _run_column(za, zb, ya, xa, pshape, fshape, half)
        first = pa_pos + 1 if zb == za else 0
        if high_a:
            lo, hi = max(first, span[zb, 0]), span[zb, 1]
            if lo >= hi:
                continue
            s = srow[col_base + lo:col_base + hi]
            c = crow[col_base + lo:col_base + hi]
            b = buf[zb * plane + lo:zb * plane + hi]
            for i in range(hi - lo):
                pb = b[i]  # NaN (no vote) selects 0, never multiplies
                v = (pa * pb - th2) if pb > th else (
                    -(pa * (one - pb) - th2) if pb < bg else np.float32(0.0))
                s[i] += v * inv_norm
                c[i] += np.uint16(1) if (pb > th or pb < bg) else np.uint16(0)
        else:
            lo, hi = max(first, span[zb, 2]), span[zb, 3]
            if lo >= hi:
                continue
            s = srow[col_base + lo:col_base + hi]
            c = crow[col_base + lo:col_base + hi]
            b = buf[zb * plane + lo:zb * plane + hi]
            for i in range(hi - lo):
                pb = b[i]
                v = -(pb * (one - pa) - th2) if pb > th else np.float32(0.0)
                s[i] += v * inv_norm
                c[i] += np.uint16(1) if pb > th else np.uint16(0)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _score_with_centre(ka, cls, span, pshape, fshape, half, srow):
    """A centre's score terms for the pairs (u, v), v after u: +C(u, v) for u, v in H_c,
    -C(u, v) for one in H_c and one in L_c, summed in float64.

    ``cls`` holds the centre's pitched int8 classes (1 in H_c, -1 in L_c, 0 else), ``srow``
    u's finalised row; every pair with a term received a vote from this very centre, so its
    C is defined (the NaN of undefined pairs is never added).
    """
    py, px = pshape[1], pshape[2]
    plane = py * fshape[2]
    pa_pos = ((ka // px) % py) * fshape[2] + ka % px
    za = ka // (py * px)
    ca = cls[za * plane + pa_pos]
    if ca == 0:
        return 0.0
    ya = (ka // px) % py
    xa = ka % px
    total = 0.0
    for zb in range(za, pshape[0]):
        col_base = _run_column(za, zb, ya, xa, pshape, fshape, half)
        first = pa_pos + 1 if zb == za else 0
        acc = 0.0
        if ca == 1:
            lo, hi = max(first, span[zb, 0]), span[zb, 1]
            if lo >= hi:
                continue
            s = srow[col_base + lo:col_base + hi]
            b = cls[zb * plane + lo:zb * plane + hi]
            for i in range(hi - lo):
                acc += np.float64(s[i]) * b[i] if b[i] != 0 else 0.0
        else:
            lo, hi = max(first, span[zb, 2]), span[zb, 3]
            if lo >= hi:
                continue
            s = srow[col_base + lo:col_base + hi]
            b = cls[zb * plane + lo:zb * plane + hi]
            for i in range(hi - lo):
                acc -= np.float64(s[i]) if b[i] == 1 else 0.0
        total += acc
    return total


@njit(cache=True, parallel=True, nogil=True)
def consensus_rows(patches, cand, cflat, row_start, slot, bands, workers, slab_start, max_row,
                   offs, r, pshape, fshape, half, vmask, vidx, th, bg, height, cons,
                   score_part, n_high, n_low):
    """Steps 1-2: the consensus C of every voting pixel, one row at a time, and the score
    terms of every candidate patch.

    ``cand`` (n, 3) are the candidate centres sorted by (y, z, x), ``row_start[y]`` the
    first of centre row y, ``slot`` (Z, Y, X) int32 the position of a candidate within its
    row (-1 elsewhere). Pixel rows are processed in bands (``bands`` holds the first y of
    each, plus Y); worker w takes the consecutive bands ``workers[w]:workers[w + 1]``, the
    workers run in parallel, each keeping
    the pitched patches of the ``2 ry + 1`` centre rows around its current pixel row in a
    ring (``max_row`` candidates per centre row). A pixel u gathers the votes of all centres
    whose box holds it into its own consensus row, which stays in cache, and the row is
    finalised (sum / count, NaN where no vote). The centres are visited in the order of the
    per-patch formulation (stripes of ``height`` centre rows, even stripes first, then by
    (y, z, x)), so every C is the same float32 value. Then the pairs (u, v), v after u, of
    every centre add their score terms to ``score_part[band, i - slab_start[band]]``
    (float64; a band's centres are those within ``ry`` rows of it), so the scores do not
    depend on the number of workers. ``n_high`` / ``n_low`` get |H_c| and |L_c|. All
    """
    Z, Y, X = vmask.shape[0] - 2 * r[0], vmask.shape[1] - 2 * r[1], vmask.shape[2] - 2 * r[2]
    pz, py = pshape[0], pshape[1]
    ring_size = 2 * r[1] + 1
    th2 = np.float32(th * th)
    inv_norm = np.float32(1.0 / (1.0 - th * th))
    n_cols = cons.shape[1]
    for w in prange(workers.shape[0] - 1):
        ring = np.empty((ring_size, max_row, pz * py * fshape[2]), np.float32)
        ring_cls = np.empty((ring_size, max_row, pz * py * fshape[2]), np.int8)
        ring_span = np.empty((ring_size, max_row, pz, 4), np.int64)
        ring_y = np.full(ring_size, -1, np.int64)
        crow = np.empty((TILE, n_cols), np.uint16)
        for band in range(workers[w], workers[w + 1]):
            part = score_part[band]
            part[:] = 0.0
            for y in range(bands[band], bands[band + 1]):
                for cy in range(max(0, y - r[1]), min(Y, y + r[1] + 1)):
                    if ring_y[cy % ring_size] != cy:
                        _load_centre_row(patches, cy, row_start, cand, cflat, offs, r, fshape,
                                         vmask, th, bg, ring[cy % ring_size],
                                         ring_cls[cy % ring_size], ring_span[cy % ring_size],
                                         n_high, n_low)
                        ring_y[cy % ring_size] = cy
                _consensus_of_row(y, Z, Y, X, r, pshape, fshape, half, th, bg, th2, inv_norm,
                                  height, slot, row_start, vidx, ring, ring_cls, ring_span,
                                  crow, cons, part, slab_start[band])


@njit(cache=True, nogil=True)
def row_work(vidx, cand_mask, r):
    """Work of the consensus pass per image row: the number of (voting pixel, candidate
    centre) pairs with the pixel in the centre's box, summed over the row's pixels.

    ``cand_mask`` (Z, Y, X) is 1 at the candidate centres; ``vidx`` the padded row map.
    """
    Z, Y, X = cand_mask.shape
    prefix = np.zeros((Z, Y, X + 1), np.int64)  # candidates per line up to x
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                prefix[z, y, x + 1] = prefix[z, y, x] + cand_mask[z, y, x]
    out = np.zeros(Y, np.int64)
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                if vidx[z + r[0], y + r[1], x + r[2]] < 0:
                    continue
                x0, x1 = max(0, x - r[2]), min(X, x + r[2] + 1)
                for cz in range(max(0, z - r[0]), min(Z, z + r[0] + 1)):
                    for cy in range(max(0, y - r[1]), min(Y, y + r[1] + 1)):
                        out[y] += prefix[cz, cy, x1] - prefix[cz, cy, x0]
    return out


@njit(cache=True, nogil=True)
def _consensus_of_row(y, Z, Y, X, r, pshape, fshape, half, th, bg, th2, inv_norm, height,
                      slot, row_start, vidx, ring, ring_cls, ring_span, crow, cons, part,
                      part_start):
    """Consensus rows and score terms of the voting pixels of image row y (see
    :func:`consensus_rows`).

    The pixels are taken in tiles of ``crow.shape[0]`` neighbours along x: each centre's
    pitched patch is then read once per tile, while it is in cache, instead of once per
    pixel. Every pixel still gets the votes of its centres in the same order, and every
    centre the score terms of its pixels in raster order, so the values do not depend on
    the tile size.
    """
    py, px = pshape[1], pshape[2]
    ring_size = 2 * r[1] + 1
    n_cols = cons.shape[1]
    tile_size = crow.shape[0]
    rows = np.empty(tile_size, np.int64)
    for z in range(Z):
        for x0 in range(0, X, tile_size):
            tile_len = min(tile_size, X - x0)
            n_voting = 0
            for t in range(tile_len):
                rows[t] = vidx[z + r[0], y + r[1], x0 + t + r[2]]
                if rows[t] >= 0:
                    n_voting += 1
                    cons[rows[t]] = 0.0
                    crow[t] = 0
            if n_voting == 0:
                continue
            x1 = x0 + tile_len - 1
            for parity in range(2):
                for cy in range(max(0, y - r[1]), min(Y, y + r[1] + 1)):
                    if (cy // height) % 2 != parity:
                        continue
                    for cz in range(max(0, z - r[0]), min(Z, z + r[0] + 1)):
                        for cx in range(max(0, x0 - r[2]), min(X, x1 + r[2] + 1)):
                            j = slot[cz, cy, cx]
                            if j < 0:
                                continue
                            for t in range(max(0, cx - r[2] - x0),
                                           min(tile_len, cx + r[2] - x0 + 1)):
                                if rows[t] < 0:
                                    continue
                                ka = ((z - cz + r[0]) * py + (y - cy + r[1])) * px \
                                    + (x0 + t - cx + r[2])
                                _votes_with_centre(ka, ring[cy % ring_size, j],
                                                   ring_span[cy % ring_size, j], pshape, fshape,
                                                   half, th, bg, th2, inv_norm, cons[rows[t]],
                                                   crow[t])
            for t in range(tile_len):
                if rows[t] < 0:
                    continue
                srow = cons[rows[t]]
                for col in range(n_cols):
                    if crow[t, col] > 0:
                        srow[col] = srow[col] / crow[t, col]
                    else:
                        srow[col] = np.nan
            for cy in range(max(0, y - r[1]), min(Y, y + r[1] + 1)):
                for cz in range(max(0, z - r[0]), min(Z, z + r[0] + 1)):
                    for cx in range(max(0, x0 - r[2]), min(X, x1 + r[2] + 1)):
                        j = slot[cz, cy, cx]
                        if j < 0:
                            continue
                        for t in range(max(0, cx - r[2] - x0),
                                       min(tile_len, cx + r[2] - x0 + 1)):
                            if rows[t] < 0:
                                continue
                            ka = ((z - cz + r[0]) * py + (y - cy + r[1])) * px \
                                + (x0 + t - cx + r[2])
                            part[row_start[cy] + j - part_start] += \
                                _score_with_centre(ka, ring_cls[cy % ring_size, j],
                                                   ring_span[cy % ring_size, j], pshape, fshape,
                                                   half, cons[rows[t]])


@njit(cache=True, nogil=True)
def finish_scores(score_part, slab_start, slab_end, n_high, n_low, out):
    """Patch scores: the bands' score terms summed in band order, over the number of pairs
    (-1 for a patch without any pair)."""
    out[:] = 0.0
    for band in range(score_part.shape[0]):
        for i in range(slab_start[band], slab_end[band]):
            out[i] += score_part[band, i - slab_start[band]]
    for i in range(out.shape[0]):
        nh = n_high[i]
        count = nh * (nh - 1) // 2 + nh * n_low[i]
        out[i] = out[i] / count if count > 0 else -1.0


@njit(cache=True, nogil=True)
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


@njit(cache=True, parallel=True, nogil=True)
def first_covering(patches, cflat, rank_at, pixels, offs, groups, r, stride, fc, out):
    """For every pixel u of ``pixels`` (n, 3, unpadded), the best rank among the candidate
    patches c with ``P_c(u) > fc`` (``out[i]``; -1 when there is none).

    ``rank_at`` (padded) holds each candidate centre's position in the ranking (-1
    elsewhere), ``cflat[pos]`` the patch column of the candidate at ranking position
    ``pos``. Candidates lie on the grid of spacing ``stride``, so only the offsets with
    ``u - o_k`` on it are looked at: ``groups[g]`` lists them (-1 padded) for the residue
    ``g = ((u_z % s) * s + u_y % s) * s + u_x % s`` of u.
    """
    for i in prange(pixels.shape[0]):
        z, y, x = pixels[i, 0], pixels[i, 1], pixels[i, 2]
        g = ((z % stride) * stride + y % stride) * stride + x % stride
        best = -1
        for j in range(groups.shape[1]):
            k = groups[g, j]
            if k < 0:
                break
            pos = rank_at[z - offs[k, 0] + r[0], y - offs[k, 1] + r[1], x - offs[k, 2] + r[2]]
            if pos < 0 or (best >= 0 and pos >= best):
                continue
            if patches[k, cflat[pos]] > fc:
                best = pos
        out[i] = best


@njit(cache=True, nogil=True)
def candidate_edges(centres, order, patchshape):
    """Pairs (a < b) of centres at most ``4 r = 2 * patchshape - 2`` apart on every axis
    (patches farther apart hold no pixel pair within ``2 r``, so they share no consensus).

    ``centres`` (n, 3) in any order; ``order`` sorts them by y (a stable argsort, done by
    numpy: numba's own sort costs seconds of compilation); returns an (E, 2) int64 array.
    The array grows by an element loop, not a slice copy (whose shape check compiles
    numba's string formatting: seconds of a first run).
    """
    n = centres.shape[0]
    cap = 16 * n + 16
    out = np.empty((cap, 2), np.int64)
    e = 0
    for ii in range(n):
        a = order[ii]
        for jj in range(ii + 1, n):
            b = order[jj]
            if centres[b, 1] - centres[a, 1] >= 2 * patchshape[1] - 1:
                break
            if (abs(centres[b, 0] - centres[a, 0]) < 2 * patchshape[0] - 1
                    and abs(centres[b, 2] - centres[a, 2]) < 2 * patchshape[2] - 1):
                if e == out.shape[0]:
                    bigger = np.empty((2 * out.shape[0], 2), np.int64)
                    for k in range(e):
                        bigger[k, 0] = out[k, 0]
                        bigger[k, 1] = out[k, 1]
                    out = bigger
                out[e, 0] = min(a, b)
                out[e, 1] = max(a, b)
                e += 1
    return out[:e]


@njit(cache=True, parallel=True, nogil=True)
def high_masks(patches, centres, cflat, offs, r, vmask, th, hmask, hspan):
    """H_c of every selected patch as a mask over its box, and its extent per patch line.

    ``hmask[i, k]`` (uint8) is 1 where pixel ``c_i + o_k`` is a voting pixel with
    ``P > th``. ``hspan[i, line]`` gets the first and one-past-last x (patch coordinates)
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
            if vmask[z + r[0], y + r[1], x + r[2]] != 0 and patches[k, cflat[i]] > th:
                hmask[i, k] = 1
                line = k // px
                xk = k - line * px
                hspan[i, line, 0] = min(hspan[i, line, 0], xk)
                hspan[i, line, 1] = xk + 1


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _later_sum(u, row, centre_b, hmask_b, hspan_b, r, fshape, half):
    """Sum and number of the defined C(u, v) over v in H_b after u in raster order.

    ``row`` is u's consensus row (NaN where undefined), ``centre_b`` the centre of b. Only the
    patch lines of b within ``2 r`` of u are visited, each over the x-extent of H_b on it
    clipped to ``u_x +- 2 r_x``: one contiguous run of consensus columns per line.
    """
    pz, py, px = 2 * r[0] + 1, 2 * r[1] + 1, 2 * r[2] + 1
    total = 0.0
    count = 0
    z0 = centre_b[0] - r[0]
    y0 = centre_b[1] - r[1]
    x0 = centre_b[2] - r[2]
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
            if lo >= hi:
                continue
            t, c = _masked_sum(row[base + lo:base + hi], hmask_b[line * px + lo:line * px + hi])
            total += t
            count += c
    return total, count


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, inline="always")
def _masked_sum(vals, mask):
    """Sum and number of the defined (not NaN) ``vals`` where ``mask`` is set."""
    total = 0.0
    count = 0
    for i in range(vals.shape[0]):
        value = vals[i]
        if mask[i] != 0 and value == value:
            total += value
            count += 1
    return total, count


@njit(cache=True, parallel=True, nogil=True)
def edge_weight_parts(centres, offs, hmask, hspan, nbr_start, nbr_node, nbr_slot, vidx, r,
                      fshape, half, cons, part_sum, part_cnt, visit):
    """Per node b, the sums over its neighbours a of the defined C(u, v), u in H_a, v in H_b,
    v after u in raster order; written to ``part_sum[nbr_slot[j]]`` / ``part_cnt``.

    The neighbours of b are ``nbr_node[nbr_start[b]:nbr_start[b + 1]]``. The sum over v of a
    pixel u (``T_b(u)``) is computed once per node and reused for every neighbour whose H
    holds u (neighbouring patches overlap), in a scratch grid over ``c_b +- 3 r`` (a pixel
    farther from c_b has no v within ``2 r``). ``vidx`` is the padded row map; ``visit`` the order in which the
    threads take the nodes (each node's sums are its own, so any order gives the same).
    """
    P = offs.shape[0]
    gz, gy, gx = 6 * r[0] + 1, 6 * r[1] + 1, 6 * r[2] + 1
    for ib in prange(centres.shape[0]):
        b = visit[ib]
        if nbr_start[b] == nbr_start[b + 1]:
            continue
        tsum = np.empty((gz, gy, gx), np.float64)
        tcnt = np.empty((gz, gy, gx), np.int64)
        done = np.zeros((gz, gy, gx), np.uint8)
        centre_b = centres[b]
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
                qz = u[0] - centre_b[0] + 3 * r[0]
                qy = u[1] - centre_b[1] + 3 * r[1]
                qx = u[2] - centre_b[2] + 3 * r[2]
                if qz < 0 or qz >= gz or qy < 0 or qy >= gy or qx < 0 or qx >= gx:
                    continue
                if done[qz, qy, qx] == 0:
                    row = cons[vidx[u[0] + r[0], u[1] + r[1], u[2] + r[2]]]
                    t, c = _later_sum(u, row, centre_b, hmask[b], hspan[b], r, fshape, half)
                    tsum[qz, qy, qx] = t
                    tcnt[qz, qy, qx] = c
                    done[qz, qy, qx] = 1
                total += tsum[qz, qy, qx]
                count += tcnt[qz, qy, qx]
            part_sum[nbr_slot[j]] = total
            part_cnt[nbr_slot[j]] = count


@njit(cache=True, nogil=True)
def paint(patches, centres, cflat, comp, offs, r, mask, th, out):
    """Paint {P > th} & mask of each patch, in the given order, into ``out``.

    ``out`` (L, Z, Y, X): with one layer (L == 1) a label image, each patch writing its
    component id (later patches win); with one layer per component, a mask stack, each patch
    setting its component's mask (``comp - 1``) to 1.
    """
    P = offs.shape[0]
    stack = out.shape[0] > 1
    for i in range(centres.shape[0]):
        c = centres[i]
        layer = comp[i] - 1 if stack else 0
        value = 1 if stack else comp[i]
        for k in range(P):
            z = c[0] + offs[k, 0] + r[0]
            y = c[1] + offs[k, 1] + r[1]
            x = c[2] + offs[k, 2] + r[2]
            if mask[z, y, x] != 0 and patches[k, cflat[i]] > th:
                out[layer, z, y, x] = value


@njit(cache=True, nogil=True)
def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:
        nxt = parent[a]
        parent[a] = root
        a = nxt
    return root


@njit(cache=True, nogil=True)
def connected_components(n, edges, weights):
    """Union-find over edges with weight > 0; returns the root of every node."""
    parent = np.arange(n)
    for e in range(edges.shape[0]):
        if weights[e] > 0:
            root_a = _find(parent, edges[e, 0])
            root_b = _find(parent, edges[e, 1])
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    for i in range(n):
        parent[i] = _find(parent, i)
    return parent


@njit(cache=True, nogil=True)
def mutex_watershed(n, edges, weights, order):
    """Mutex watershed over the edges in ``order``; returns the root of every node.

    An attractive edge (w > 0) joins two clusters unless a repulsive edge seen before it
    holds between them; a repulsive one (w < 0) records that constraint; w = 0 does
    nothing. The root of a cluster is its smallest node. Each root keeps its constraints
    as a linked list of the far nodes (``other``, ``nxt``), joined in O(1) when two
    clusters merge; a check scans the shorter of the two lists, finding each far node's
    current root.
    """
    parent = np.arange(n)
    m = order.shape[0]
    other = np.empty(2 * m, np.int64)
    nxt = np.full(2 * m, -1, np.int64)
    head = np.full(n, -1, np.int64)
    tail = np.full(n, -1, np.int64)
    length = np.zeros(n, np.int64)
    k = 0
    for e in order:
        w = weights[e]
        if w == 0:
            continue
        root_a = _find(parent, edges[e, 0])
        root_b = _find(parent, edges[e, 1])
        if root_a == root_b:
            continue
        if w > 0:
            a, b = (root_a, root_b) if length[root_a] <= length[root_b] else (root_b, root_a)
            j = head[a]
            blocked = False
            while j >= 0:
                if _find(parent, other[j]) == b:
                    blocked = True
                    break
                j = nxt[j]
            if blocked:
                continue
            keep, gone = min(root_a, root_b), max(root_a, root_b)
            parent[gone] = keep
            if head[gone] >= 0:
                if head[keep] < 0:
                    head[keep] = head[gone]
                else:
                    nxt[tail[keep]] = head[gone]
                tail[keep] = tail[gone]
                length[keep] += length[gone]
                head[gone] = -1
                tail[gone] = -1
                length[gone] = 0
        else:
            for u, v in ((root_a, root_b), (root_b, root_a)):
                other[k] = v
                if head[u] < 0:
                    head[u] = k
                else:
                    nxt[tail[u]] = k
                tail[u] = k
                length[u] += 1
                k += 1
    for i in range(n):
        parent[i] = _find(parent, i)
    return parent


# the shipped kernels for any x86-64 CPU, when they apply (see _portable.py)
_portable.attach(globals())
