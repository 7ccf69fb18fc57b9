"""A plain U-Net for 2D and 3D images with "same" (zero) padding.

The output has the spatial size of the input whenever every spatial size is divisible by
:attr:`UNet.size_divisor`. ``forward`` has no data-dependent Python control flow, so the
network traces with :func:`torch.jit.trace` and exports to ONNX.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import UserError

UpMode = Literal["transpose", "upsample"]


def conv_ops(ndim: int):
    """``(Conv, ConvTranspose, MaxPool)`` classes for a 2D or 3D network."""
    if ndim == 2:
        return nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d
    if ndim == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d
    raise UserError(f"ndim must be 2 or 3, got {ndim}")


class ConvBlock(nn.Sequential):
    """Two 3x3[x3] convolutions with zero padding, each followed by a ReLU."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int):
        conv, _, _ = conv_ops(ndim)
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class _Up(nn.Module):
    """x2 upsampling to ``out_channels``: a 2x2[x2] transposed conv, or nearest + 3x3 conv."""

    def __init__(self, ndim: int, in_channels: int, out_channels: int, mode: UpMode):
        super().__init__()
        conv, convt, _ = conv_ops(ndim)
        if mode == "transpose":
            self.op = convt(in_channels, out_channels, 2, stride=2)
        elif mode == "upsample":
            self.op = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                    conv(in_channels, out_channels, 3, padding=1))
        else:
            raise UserError(f"up_mode must be 'transpose' or 'upsample', got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class UNet(nn.Module):
    """U-Net: ``depth`` levels, max-pool down, skip connections by concatenation.

    Parameters
    ----------
    ndim : {2, 3}
        Spatial dimensions; inputs are ``(B, in_channels, [Z,] Y, X)``.
    in_channels : int
        Input channels.
    base_features : int
        Feature maps at the top level; level ``i`` has ``base_features * growth**i``.
    depth : int
        Number of levels (``depth - 1`` poolings), at least 1.
    growth : int
        Feature growth factor per level.
    padding : {"same"}
        Zero padding, so the output keeps the input's spatial size.
    up_mode : {"transpose", "upsample"}
        Transposed convolution, or nearest upsampling followed by a 3x3 convolution.

    Attributes
    ----------
    size_divisor : int
        ``2**(depth - 1)``; every spatial input size must be a multiple of it.
    out_channels : int
        Feature maps of the output (``base_features``).
    context : int
        Receptive-field radius in pixels (see :meth:`receptive_field`).

    Examples
    --------
    >>> import torch
    >>> net = UNet(2, 1, base_features=4, depth=3)
    >>> net(torch.zeros(1, 1, 16, 24)).shape
    torch.Size([1, 4, 16, 24])
    """

    def __init__(self, ndim: int, in_channels: int, base_features: int = 16, depth: int = 3,
                 growth: int = 2, padding: str = "same", up_mode: UpMode = "transpose"):
        super().__init__()
        _validate_unet_args(ndim, in_channels, base_features, depth, growth, padding)
        _, _, pool = conv_ops(ndim)
        feats = [base_features * growth**i for i in range(depth)]
        self.ndim = ndim
        self.depth = depth
        self.size_divisor = 2 ** (depth - 1)
        self.out_channels = feats[0]
        self.down = nn.ModuleList()
        prev = in_channels
        for f in feats:
            self.down.append(ConvBlock(ndim, prev, f))
            prev = f
        self.pool = pool(2)
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.ups.append(_Up(ndim, feats[i + 1], feats[i], up_mode))
            self.up_blocks.append(ConvBlock(ndim, 2 * feats[i], feats[i]))
        self.up_mode = up_mode
        self.context = max(max(p - lo, hi - p) for p in range(self.size_divisor)
                           for lo, hi in [self.receptive_field(p)])

    def receptive_field(self, position: int = 0) -> tuple[int, int]:
        """First and last input pixel (along one axis) that output pixel ``position`` sees.

        Derived from the layers: every 3x3 convolution widens the interval by one pixel of
        its level on each side, a pooling maps level-``i`` pixel ``q`` to ``2q, 2q + 1`` of
        level ``i - 1``, and an upsampling maps pixel ``p`` to ``p // 2`` of the level below.
        Borders are ignored (an infinite image); the result depends on ``position`` modulo
        :attr:`size_divisor` only through the pooling grid.

        Examples
        --------
        >>> UNet(2, 1, base_features=4, depth=2).receptive_field(0)
        (-8, 9)
        """
        return _decoder_extent(self.depth, 0, self.up_mode, position, position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.ups, self.up_blocks):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        return x


def _encoder_extent(level: int, lo: int, hi: int) -> tuple[int, int]:
    """Input interval seen by the outputs ``[lo, hi]`` of encoder block ``level``."""
    lo, hi = lo - 2, hi + 2  # two 3x3 convolutions
    if level == 0:
        return lo, hi
    return _encoder_extent(level - 1, 2 * lo, 2 * hi + 1)  # max pooling


def _decoder_extent(depth: int, level: int, up_mode: str, lo: int, hi: int) -> tuple[int, int]:
    """Input interval seen by the outputs ``[lo, hi]`` of the decoder at ``level``."""
    if level == depth - 1:
        return _encoder_extent(level, lo, hi)
    lo, hi = lo - 2, hi + 2  # the up block's two 3x3 convolutions
    skip = _encoder_extent(level, lo, hi)
    if up_mode == "upsample":  # 3x3 convolution after the nearest upsampling
        lo, hi = lo - 1, hi + 1
    below = _decoder_extent(depth, level + 1, up_mode, lo // 2, hi // 2)
    return min(skip[0], below[0]), max(skip[1], below[1])


def _validate_unet_args(ndim, in_channels, base_features, depth, growth, padding):
    if ndim not in (2, 3):
        raise UserError(f"ndim must be 2 or 3, got {ndim}")
    if padding != "same":
        raise UserError(f"only padding='same' is implemented, got {padding!r}")
    for name, value in (("in_channels", in_channels), ("base_features", base_features),
                        ("depth", depth), ("growth", growth)):
        if int(value) < 1:
            raise UserError(f"{name} must be a positive integer, got {value}")
