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
3D ``(8, 3, 3, 3)`` (216 channels; 3 -> 6 -> 12 for a 9x9x9 patch). These rules
(:func:`default_code_shape`, :func:`decoder_levels`) live in
:mod:`ppp_zoo.postprocess.code_layout`, which needs no torch, and are re-exported here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..postprocess.code_layout import (  # noqa: F401 - re-exported
    DEFAULT_CODE_SHAPES,
    _validate_decoder_args,
    decoder_levels,
    default_code_shape,
)
from .unet import conv_ops


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
            raise UserError(f"need {levels} feature counts for code grid {code_shape[1:]} and "
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
