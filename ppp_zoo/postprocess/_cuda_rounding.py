"""How the compiled CPU vote kernel rounds, which the CUDA consensus kernel reproduces.

The CPU kernel ``_votes_with_centre`` (``_kernels.py``) computes each vote and each
accumulation as a multiply and an add, which its compiler may fuse into one FMA (one
rounding) or not (two). :func:`cpu_vote_rounding` finds out which, once per process, by
running that kernel on values that tell the two apart; the CUDA consensus kernel
(``_cuda_consensus.py``) then rounds every expression the same way. :func:`_fma32_exact` is
the float32 FMA computed exactly in float64, for the probe and for numba's CUDA simulator.
"""

from __future__ import annotations

import math

import numpy as np


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
    from . import _kernels as cpu_kernels

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
        cpu_kernels._votes_with_centre(0, buf, span, np.array([1, 1, px], np.int64),
                                       np.array([1, 1, fx], np.int64), 2 * rx, th, bg, th2,
                                       f32(inv), srow, crow)
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
                fused_votes = [_fma32_exact(pa, b, -th2) for b in pb]
                plain_votes = [f32(f32(pa * b) - th2) for b in pb]
            elif case == "hl":
                pa, pb = high[0], low[1:]
                fused_votes = [_fma32_exact(-pa, f32(1) - b, th2) for b in pb]
                plain_votes = [f32(th2 - f32(pa * (f32(1) - b))) for b in pb]
            elif case == "lh":
                pa, pb = low[0], high[1:]
                fused_votes = [_fma32_exact(-b, f32(1) - pa, th2) for b in pb]
                plain_votes = [f32(th2 - f32(b * (f32(1) - pa))) for b in pb]
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
            fused.append(np.array(fused_votes, np.float32))
            plain.append(np.array(plain_votes, np.float32))
        out.append(verdict(np.concatenate(got), np.concatenate(fused), np.concatenate(plain)))
    if any(v is None for v in out):
        return None
    return tuple(out)
