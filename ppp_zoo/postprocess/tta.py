"""Test-time augmentation: a network's outputs over mirrored and transposed images, averaged.

A transform is a tuple of per-axis flips plus, where the two last axes have the same patch
size, a swap of y and x (:func:`transforms`: the 8 rotations and mirrors of a 2D image).
The network runs on each transformed image; its outputs are mapped back to the image's
grid (:func:`invert`). numinst is averaged pixel by pixel. A patch is not a scalar field:
its offsets turn with the image, so the features of all transforms are stacked per pixel
and :class:`AveragedDecoder` decodes each transform's patch, turns its offsets back and
averages the patches. That decoder plugs into every decoding path (dense, candidates only,
blockwise), so the assembly is the usual one.

>>> import numpy as np
>>> x = np.arange(6).reshape(1, 2, 3)
>>> all(np.array_equal(invert(apply(x, t), t), x) for t in transforms((3, 3)))
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .errors import PostprocessError

Transform = tuple[tuple[bool, ...], bool]
"""(flip per space axis, swap of the last two axes)."""


def transforms(patchshape: Sequence[int]) -> list[Transform]:
    """The identity first, then every combination of flips and (for equal last two patch
    sizes) the swap of y and x: 8 in 2D with square patches, 16 in 3D with cubic ones.

    >>> len(transforms((17, 17))), len(transforms((9, 5))), len(transforms((5, 9, 9)))
    (8, 4, 16)
    """
    ndim = len(patchshape)
    swaps = (False, True) if ndim >= 2 and patchshape[-1] == patchshape[-2] else (False,)
    out = []
    for swap in swaps:
        for bits in range(2 ** ndim):
            out.append((tuple(bool(bits >> a & 1) for a in range(ndim)), swap))
    return out


def apply(x: np.ndarray, transform: Transform) -> np.ndarray:
    """``x`` (any leading axes, then the space axes) seen through ``transform``: flips
    first, then the swap."""
    flips, swap = transform
    ndim = len(flips)
    lead = x.ndim - ndim
    index = (slice(None),) * lead + tuple(slice(None, None, -1) if f else slice(None)
                                          for f in flips)
    out = x[index]
    return np.swapaxes(out, -1, -2) if swap else out


def invert(y: np.ndarray, transform: Transform) -> np.ndarray:
    """The inverse of :func:`apply`: swap first, then the flips."""
    flips, swap = transform
    if swap:
        y = np.swapaxes(y, -1, -2)
    ndim = len(flips)
    index = (slice(None),) * (y.ndim - ndim) + tuple(slice(None, None, -1) if f else slice(None)
                                                     for f in flips)
    return y[index]


@dataclasses.dataclass(frozen=True)
class AveragedDecoder:
    """Decodes the stacked per-transform features of a pixel into its averaged patch.

    ``decode_pixels`` takes ``(N, T * F)``: for each of the ``T`` transforms, the features
    that the network gave at the pixel's position in that transform's image. Each block of
    ``F`` is decoded by ``decoder`` into a patch in that image's frame, whose offsets are
    turned back (:func:`invert` on the patch axes) before the ``T`` patches are averaged.
    """

    decoder: object  # a PixelDecoder: PatchHead or Decoder
    transforms: tuple[Transform, ...]

    def __post_init__(self):
        shape = tuple(self.decoder.patchshape)
        for flips, swap in self.transforms:
            if len(flips) != len(shape) or (swap and shape[-1] != shape[-2]):
                raise PostprocessError(f"transform {(flips, swap)} does not fit the patch "
                                       f"shape {shape}")

    @property
    def patchshape(self) -> tuple[int, ...]:
        return tuple(self.decoder.patchshape)

    @property
    def ndim(self) -> int:
        return len(self.patchshape)

    @property
    def in_channels(self) -> int:
        return len(self.transforms) * int(self.decoder.in_channels)

    @property
    def n_patch(self) -> int:
        return int(self.decoder.n_patch)

    def bytes_per_code(self) -> int:
        return len(self.transforms) * int(self.decoder.bytes_per_code())

    def decode_pixels(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, np.float32)
        f = int(self.decoder.in_channels)
        if features.ndim != 2 or features.shape[1] != self.in_channels:
            raise PostprocessError(f"features must have shape (N, {self.in_channels}), got "
                                   f"{features.shape}")
        total = np.zeros((len(features), self.n_patch), np.float64)
        for k, transform in enumerate(self.transforms):
            patches = self.decoder.decode_pixels(np.ascontiguousarray(
                features[:, k * f:(k + 1) * f]))
            turned = invert(patches.reshape((len(features),) + self.patchshape), transform)
            total += turned.reshape(len(features), -1)
        return (total / len(self.transforms)).astype(np.float32)


__all__ = ["AveragedDecoder", "Transform", "apply", "invert", "transforms"]
