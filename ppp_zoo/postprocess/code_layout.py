"""The code layout of the ``ppp+dec`` variant: default code shapes and decoder levels.

Plain Python (no numpy, no torch), so that a training configuration can be checked
without the network's libraries; :mod:`ppp_zoo.model.decoder` builds the PyTorch decoder
from these rules and :mod:`.decode` runs the same maths in numpy.

A code vector of ``C = prod(code_shape)`` values is read as ``c0`` channels on a
``g_1 x ... x g_ndim`` grid, ``code_shape = (c0, g_1, ..., g_ndim)``; the decoder has
``L`` levels, the smallest number with ``g_i * 2**L >= patchshape[i]`` on every axis.

>>> decoder_levels(2, None, (25, 25))  # default grid 4x4: 4 -> 8 -> 16 -> 32
3
>>> default_code_shape(3, 54)
(2, 3, 3, 3)
"""

from __future__ import annotations

import math

from .errors import PostprocessError

DEFAULT_CODE_SHAPES = {2: (16, 4, 4), 3: (8, 3, 3, 3)}


def default_code_shape(ndim: int, code_channels: int | None = None) -> tuple[int, ...]:
    """Default code layout for ``ndim``; with ``code_channels``, keep the grid, adapt ``c0``."""
    if ndim not in DEFAULT_CODE_SHAPES:
        raise PostprocessError(f"ndim must be 2 or 3, got {ndim}")
    shape = DEFAULT_CODE_SHAPES[ndim]
    if code_channels is None:
        return shape
    grid = math.prod(shape[1:])
    if code_channels < grid or code_channels % grid:
        raise PostprocessError(f"code_channels must be a positive multiple of the default {ndim}D "
                         f"code grid {shape[1:]} ({grid}), got {code_channels}; "
                         "pass code_shape instead")
    return (code_channels // grid,) + shape[1:]


def decoder_levels(ndim: int, code_shape, patchshape) -> int:
    """Upsampling levels of the decoder for ``code_shape`` (``None``: the default) and
    ``patchshape``; raises ``ValueError`` for inconsistent shapes."""
    code_shape = default_code_shape(ndim) if code_shape is None else tuple(map(int, code_shape))
    return _validate_decoder_args(ndim, code_shape, tuple(map(int, patchshape)))


def _validate_decoder_args(ndim, code_shape, patchshape) -> int:
    """Check the shapes and return the number of upsampling levels."""
    if ndim not in (2, 3):
        raise PostprocessError(f"ndim must be 2 or 3, got {ndim}")
    if len(code_shape) != ndim + 1 or min(code_shape) < 1:
        raise PostprocessError(f"code_shape must be (channels, grid...) with {ndim} positive grid "
                         f"sizes, got {code_shape}")
    if len(patchshape) != ndim or any(p < 1 or p % 2 == 0 for p in patchshape):
        raise PostprocessError(f"patchshape must be {ndim} odd positive sizes, got {patchshape}")
    levels = 0
    while any(g * 2**levels < p for g, p in zip(code_shape[1:], patchshape)):
        levels += 1
    return levels
