"""The per-patch formulation of the consensus votes, kept as an oracle for the kernels.

This is how ppp_zoo.postprocess accumulated the votes before the row-by-row pass: every
candidate patch adds its votes into shared sum and count arrays (stripes of centre rows
of one parity in parallel, even stripes first). The row-by-row pass visits the centres of
every pair in the same order and computes each vote the same way, so both give the same
float32 consensus; tests/test_assembly_kernels.py checks that.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=False, nogil=True)
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


@njit(cache=False, nogil=True, inline="always")
def _line_column(za, ya, xa, zb, yb, pshape, fshape, half):
    """Consensus column of the pair (a, b) with b at x = 0 of patch line (zb, yb).

    Adding b's x gives the column of any b on that line: the offsets o_b - o_a of one line
    are consecutive in the column order.
    """
    return ((((zb - za + 2 * (pshape[0] // 2)) * fshape[1] + (yb - ya + 2 * (pshape[1] // 2)))
             * fshape[2]) + (2 * (pshape[2] // 2) - xa) - half - 1)


@njit(cache=False, nogil=True, fastmath=True)
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


@njit(cache=False, parallel=True)
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


def per_patch_consensus(prep, cand_flat):
    """Consensus values (NaN where undefined) of the per-patch formulation.

    prep is an assembly.Prepared; the result has the layout of
    Consensus.values.
    """
    geo = prep.geo
    n_cols = geo.n_columns
    csum = np.zeros((prep.n_voting, n_cols), np.float32)
    ccnt = np.zeros((prep.n_voting, n_cols), np.uint16)
    cand_flat = np.ascontiguousarray(cand_flat, np.int64)
    centres = prep.centres_of(cand_flat)
    order = np.argsort(centres[:, 1], kind="stable")
    by_row = np.ascontiguousarray(centres[order])
    height = max(2 * int(geo.r[1]), 1)
    stripe_of = by_row[:, 1] // height
    n_stripes = int(geo.shape[1] // height + 1)
    stripes = np.searchsorted(stripe_of, np.arange(n_stripes + 1)).astype(np.int64)
    for parity in (0, 1):
        accumulate_votes(prep.patches, by_row, prep.columns_of(cand_flat[order]), stripes,
                         parity, prep.offs, prep.r, prep.pshape, prep.fshape, n_cols,
                         prep.vmask, prep.vidx, prep.th, prep.bg, csum, ccnt)
    # the kernels divide in float64 and round to float32
    values = np.where(ccnt > 0, csum.astype(np.float64) / np.maximum(ccnt, 1), np.nan)
    return values.astype(np.float32)
