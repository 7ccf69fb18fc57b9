"""The small convolutional patch decoder of the ``ppp+dec`` variant.

Code layout
-----------
A code vector of ``C = prod(code_shape)`` values is read in C order as a tiny grid
``code_shape = (c0, g_1, ..., g_ndim)``: ``c0`` channels on a ``g_1 x ... x g_ndim`` grid.
Each of ``L`` levels upsamples x2 (nearest) and applies two 3x3[x3] convolutions with ReLU
(feature maps ``features[0] -> features[1] -> ...``, by default 64, 32, 16, ...); a 1x1
convolution maps to one channel, and the ``g * 2**L`` grid is centre-cropped to
``patchshape``. ``L`` is the smallest number of levels with ``g_i * 2**L >= patchshape[i]``
on every axis. The output is patch logits ``(N, prod(patchshape))`` in C order over
``patchshape``, the channel order of the ``ppp`` patch head and of the GT targets.

Defaults: 2D ``(16, 4, 4)`` (256 channels; 4 -> 8 -> 16 -> 32 for a 25x25 patch),
3D ``(8, 3, 3, 3)`` (216 channels; 3 -> 6 -> 12 for a 9x9x9 patch).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .unet import conv_ops

DEFAULT_CODE_SHAPES = {2: (16, 4, 4), 3: (8, 3, 3, 3)}


def default_code_shape(ndim: int, code_channels: int | None = None) -> tuple[int, ...]:
    """Default code layout for ``ndim``; with ``code_channels``, keep the grid, adapt ``c0``."""
    if ndim not in DEFAULT_CODE_SHAPES:
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    shape = DEFAULT_CODE_SHAPES[ndim]
    if code_channels is None:
        return shape
    grid = math.prod(shape[1:])
    if code_channels < grid or code_channels % grid:
        raise ValueError(f"code_channels must be a positive multiple of the default {ndim}D "
                         f"code grid {shape[1:]} ({grid}), got {code_channels}; "
                         "pass code_shape instead")
    return (code_channels // grid,) + shape[1:]


class PatchDecoder(nn.Module):
    """Decode per-pixel codes ``(N, C)`` into patch logits ``(N, prod(patchshape))``.

    Parameters
    ----------
    ndim : {2, 3}
        Patch dimensions.
    code_shape : tuple of int or None
        ``(c0, g_1, ..., g_ndim)``, see the module docstring; ``None`` for the default.
    patchshape : tuple of int
        Odd patch shape, e.g. ``(25, 25)``.
    features : tuple of int or None
        Feature maps per level; default ``64 // 2**i`` (at least 8).

    Examples
    --------
    >>> import torch
    >>> dec = PatchDecoder(2, (16, 4, 4), (25, 25))
    >>> dec(torch.rand(5, 256)).shape
    torch.Size([5, 625])
    """

    def __init__(self, ndim: int, code_shape=None, patchshape=(25, 25), features=None):
        super().__init__()
        code_shape = default_code_shape(ndim) if code_shape is None else tuple(map(int, code_shape))
        patchshape = tuple(map(int, patchshape))
        levels = _validate_decoder_args(ndim, code_shape, patchshape)
        if features is None:
            features = tuple(max(64 // 2**i, 8) for i in range(levels))
        features = tuple(map(int, features))
        if len(features) != levels:
            raise ValueError(f"need {levels} feature counts for code grid {code_shape[1:]} and "
                             f"patchshape {patchshape}, got {features}")
        conv, _, _ = conv_ops(ndim)
        self.ndim = ndim
        self.code_shape = code_shape
        self.code_channels = math.prod(code_shape)
        self.patchshape = patchshape
        self.n_patch = math.prod(patchshape)
        layers: list[nn.Module] = []
        prev = code_shape[0]
        for f in features:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       conv(prev, f, 3, padding=1), nn.ReLU(inplace=True),
                       conv(f, f, 3, padding=1), nn.ReLU(inplace=True)]
            prev = f
        layers.append(conv(prev, 1, 1))
        self.net = nn.Sequential(*layers)
        full = [g * 2**levels for g in code_shape[1:]]
        self._crop = (slice(None), slice(None)) + tuple(
            slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(full, patchshape))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        x = self.net(code.reshape((-1,) + self.code_shape))
        return x[self._crop].reshape(-1, self.n_patch)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The weights as plain float32 arrays, keyed like ``state_dict`` (for an ``.npz``)."""
        return {k: v.detach().cpu().numpy().astype(np.float32)
                for k, v in self.state_dict().items()}


def decoder_levels(ndim: int, code_shape, patchshape) -> int:
    """Upsampling levels of the decoder for ``code_shape`` (``None``: the default) and
    ``patchshape``; raises ``ValueError`` for inconsistent shapes."""
    code_shape = default_code_shape(ndim) if code_shape is None else tuple(map(int, code_shape))
    return _validate_decoder_args(ndim, code_shape, tuple(map(int, patchshape)))


def _validate_decoder_args(ndim, code_shape, patchshape) -> int:
    """Check the shapes and return the number of upsampling levels."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if len(code_shape) != ndim + 1 or min(code_shape) < 1:
        raise ValueError(f"code_shape must be (channels, grid...) with {ndim} positive grid "
                         f"sizes, got {code_shape}")
    if len(patchshape) != ndim or any(p < 1 or p % 2 == 0 for p in patchshape):
        raise ValueError(f"patchshape must be {ndim} odd positive sizes, got {patchshape}")
    levels = 0
    while any(g * 2**levels < p for g, p in zip(code_shape[1:], patchshape)):
        levels += 1
    return levels
