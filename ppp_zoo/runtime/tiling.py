"""Tiled inference with a halo: inputs of any size through a network of limited input size.

The input is padded at its end (reflect) to the smallest size the network accepts
(``min + n * step`` per space axis), and cut into tiles of a valid size that overlap by
twice the halo; tile starts are multiples of ``step``, so every tile sees the same pooling
grid as the whole image. Of each tile only the core is kept: the halo is dropped at every
border that is not the image border. A network whose output at a pixel depends only on the
input within ``halo`` pixels (and on the pooling grid) then gives the same result tiled and
untiled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from ..errors import UserError

Progress = Optional[Callable[[int, int], None]]  # noqa: UP045 - evaluated at runtime on 3.10

DEFAULT_TILE = {2: (512, 512), 3: (64, 128, 128)}


def valid_size(size: int, minimum: int, step: int) -> int:
    """Smallest ``minimum + n * step >= size`` (``minimum`` itself when ``step`` is 0).

    >>> valid_size(100, 16, 8), valid_size(5, 16, 8), valid_size(16, 16, 8)
    (104, 16, 16)
    """
    if size <= minimum or step == 0:
        return max(minimum, size) if step else minimum
    return minimum + math.ceil((size - minimum) / step) * step


def tile_size(requested: int, minimum: int, step: int, halo: int, padded: int) -> int:
    """A valid tile size near ``requested`` (rounded down) that keeps a core of at least
    one step after dropping the halo on both sides, and no larger than ``padded``.

    >>> tile_size(500, 16, 8, 10, 1000), tile_size(20, 16, 8, 10, 1000), tile_size(512, 16, 8, 10, 96)
    (496, 32, 96)
    """
    if step == 0:
        return minimum
    t = minimum + max(0, (requested - minimum) // step) * step
    t = max(t, valid_size(2 * halo + step, minimum, step))
    return min(t, padded)


def axis_tiles(padded: int, tile: int, halo: int, step: int) -> list[tuple[int, int, int]]:
    """``(start, keep_start, keep_stop)`` of the tiles along one axis of size ``padded``.

    Consecutive keep ranges touch and cover ``[0, padded)``; each lies at least ``halo``
    inside its tile except at the image borders.

    >>> axis_tiles(100, 40, 5, 10)
    [(0, 0, 35), (30, 35, 65), (60, 65, 100)]
    """
    if tile >= padded:
        return [(0, 0, padded)]
    stride = tile - 2 * halo
    if step:
        stride = stride // step * step
    if stride <= 0:
        raise UserError(f"tile size {tile} leaves no core with halo {halo} (step {step})")
    starts = list(range(0, padded - tile, stride)) + [padded - tile]
    out, prev = [], 0
    for i, s in enumerate(starts):
        stop = padded if i == len(starts) - 1 else s + tile - halo
        out.append((s, prev, stop))
        prev = stop
    return out


def _pad_end(x: np.ndarray, target: Sequence[int]) -> np.ndarray:
    spatial = x.shape[2:]
    pad = [(0, 0), (0, 0)] + [(0, t - s) for s, t in zip(spatial, target)]
    if not any(p for _, p in pad[2:]):
        return x
    mode = "reflect" if min(spatial) > 1 else "edge"
    return np.pad(x, pad, mode=mode)


def run_tiled(engine: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray, *,
              min_shape: Sequence[int], step: Sequence[int], halo: Sequence[int],
              tile: Sequence[int] | None = None, dtype=np.float32,
              progress: Progress = None) -> list[np.ndarray]:
    """Run ``engine`` over tiles of ``x`` and put the outputs together.

    Parameters
    ----------
    engine : callable
        ``(1, C, [Z,] Y, X)`` float32 -> list of ``(1, C_k, [Z,] Y, X)`` arrays (output size
        equal to input size).
    x : ndarray, shape (1, C, [Z,] Y, X)
        The preprocessed input.
    min_shape, step, halo : sequence of int
        Per space axis, from the model package.
    tile : sequence of int, optional
        Requested tile size (rounded to a valid size); default 512x512 in 2D, 64x128x128
        in 3D. A tile larger than the input means one untiled run.
    dtype : dtype
        dtype of the stored outputs (float16 halves the memory of large images).
    progress : callable, optional
        Called with (tiles done, tiles total).

    Returns
    -------
    outputs : list of ndarray, each of shape (C_k, [Z,] Y, X)
        The batch axis dropped, cropped to the input's spatial shape.

    Examples
    --------
    >>> from scipy.ndimage import uniform_filter
    >>> net = lambda t: [uniform_filter(t, size=(1, 1, 5, 5), mode="constant")]
    >>> x = np.random.default_rng(0).random((1, 1, 50, 70)).astype(np.float32)
    >>> whole = run_tiled(net, x, min_shape=(8, 8), step=(8, 8), halo=(2, 2), tile=(100, 100))
    >>> tiled = run_tiled(net, x, min_shape=(8, 8), step=(8, 8), halo=(2, 2), tile=(16, 16))
    >>> bool(np.allclose(whole[0], tiled[0]))
    True
    """
    spatial = tuple(int(s) for s in x.shape[2:])
    ndim = len(spatial)
    if not (len(min_shape) == len(step) == len(halo) == ndim):
        raise UserError(f"min_shape {tuple(min_shape)}, step {tuple(step)} and halo "
                         f"{tuple(halo)} must have one entry per space axis of {x.shape}")
    if min(spatial, default=0) < 1:
        raise UserError(f"empty input of shape {x.shape}")
    tile = DEFAULT_TILE.get(ndim, (256,) * ndim) if tile is None else tuple(tile)
    if len(tile) != ndim:
        raise UserError(f"tile {tuple(tile)} must have {ndim} entries")
    padded = tuple(valid_size(s, m, st) for s, m, st in zip(spatial, min_shape, step))
    if any(p < s for p, s in zip(padded, spatial)):  # fixed-size axis smaller than the input
        padded = tuple(max(p, s) for p, s in zip(padded, spatial))
    tiles = tuple(tile_size(t, m, st, h, p)
                  for t, m, st, h, p in zip(tile, min_shape, step, halo, padded))
    layout = [axis_tiles(p, t, h, st) for p, t, h, st in zip(padded, tiles, halo, step)]
    xp = _pad_end(np.asarray(x, dtype=np.float32), padded)
    total = math.prod(len(a) for a in layout)
    outputs: list[np.ndarray] = []
    for done, combo in enumerate(itertools.product(*layout)):
        window = tuple(slice(s, s + t) for (s, _, _), t in zip(combo, tiles))
        keep_lo = [max(lo, 0) for _, lo, _ in combo]
        keep_hi = [min(hi, s) for (_, _, hi), s in zip(combo, spatial)]
        if outputs and any(lo >= hi for lo, hi in zip(keep_lo, keep_hi)):
            pass  # this tile's core lies in the padding only
        else:
            result = engine(np.ascontiguousarray(xp[(slice(None), slice(None)) + window]))
            if not outputs:
                outputs = [np.empty((r.shape[1],) + spatial, dtype=dtype) for r in result]
            dst = tuple(slice(lo, hi) for lo, hi in zip(keep_lo, keep_hi))
            src = tuple(slice(lo - s, hi - s) for (s, _, _), lo, hi in zip(combo, keep_lo, keep_hi))
            for out, r in zip(outputs, result):
                if tuple(r.shape[2:]) != tuple(window[i].stop - window[i].start
                                               for i in range(ndim)):
                    raise UserError(f"the model returned shape {r.shape} for a tile of shape "
                                     f"{tiles}: its output must have the input's size")
                out[(slice(None),) + dst] = r[(0, slice(None)) + src]
        if progress is not None:
            progress(done + 1, total)
    return outputs
