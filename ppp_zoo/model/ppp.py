"""The PatchPerPix network: a U-Net with a numinst head and a patch (or code) head.

Outputs, in the layout of :mod:`ppp_zoo.postprocess` plus a batch axis:

- ``variant="ppp"``: ``(numinst_logits (B, 3, [Z,] Y, X), patch_logits (B, P, [Z,] Y, X))``,
  ``P = prod(patchshape)``, channel ``k`` = offset ``unravel_index(k, patchshape) - r``.
- ``variant="ppp+dec"``: ``(numinst_logits, code_logits (B, C, [Z,] Y, X))``; the jointly
  trained :class:`~ppp_zoo.model.decoder.PatchDecoder` (``net.decoder``) turns the sigmoid
  of a pixel's code into its patch logits, see :meth:`PatchPerPixNet.decode`.

:func:`probabilities` maps the logits to what an exported model outputs (softmax over the
numinst classes, sigmoid on patch/code channels).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..errors import UserError
from ..postprocess.params import parse_shape
from .decoder import PatchDecoder, default_code_shape
from .unet import UNet, conv_ops

Variant = Literal["ppp", "ppp+dec"]
VARIANTS: tuple[str, ...] = ("ppp", "ppp+dec")


def probabilities(outputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the numinst channels, sigmoid on the patch/code channels."""
    numinst_logits, second = outputs
    return torch.softmax(numinst_logits, dim=1), torch.sigmoid(second)


class PatchPerPixNet(nn.Module):
    """U-Net + 1x1 heads predicting numinst and per-pixel shape patches (or codes).

    Parameters
    ----------
    ndim : {2, 3}
        Spatial dimensions.
    in_channels : int
        Input image channels.
    patchshape : tuple of int or str
        Odd patch shape, e.g. ``(25, 25)`` or ``"9x9x9"``.
    variant : {"ppp", "ppp+dec"}
        Dense patch channels, or latent codes plus a patch decoder.
    code_channels : int or None
        ``ppp+dec`` only: code length; the default grid of
        :func:`~ppp_zoo.model.decoder.default_code_shape` is kept and its channel count adapted.
    code_shape : tuple of int or None
        ``ppp+dec`` only: the full code layout ``(c0, grid...)``; overrides ``code_channels``.
    decoder_features : tuple of int or None
        Feature maps per decoder level (default 64, 32, ...).
    **unet_kwargs
        ``base_features``, ``depth``, ``growth``, ``padding``, ``up_mode`` of :class:`UNet`.

    Examples
    --------
    >>> import torch
    >>> net = PatchPerPixNet(2, 1, (5, 5), base_features=4, depth=2)
    >>> numinst, patches = net(torch.zeros(1, 1, 8, 8))
    >>> tuple(numinst.shape), tuple(patches.shape)
    ((1, 3, 8, 8), (1, 25, 8, 8))
    """

    def __init__(self, ndim: int, in_channels: int, patchshape, variant: Variant = "ppp",
                 code_channels: int | None = None, code_shape=None, decoder_features=None,
                 **unet_kwargs):
        super().__init__()
        patchshape = parse_shape(patchshape)
        if len(patchshape) != ndim or any(p < 1 or p % 2 == 0 for p in patchshape):
            raise UserError(f"patchshape must be {ndim} odd positive sizes, got {patchshape}")
        if variant not in VARIANTS:
            raise UserError(f"variant must be one of {VARIANTS}, got {variant!r}")
        conv, _, _ = conv_ops(ndim)
        self.ndim = ndim
        self.patchshape = patchshape
        self.variant = variant
        self.unet = UNet(ndim, in_channels, **unet_kwargs)
        self.size_divisor = self.unet.size_divisor
        # context to add on every side so that tiles agree with the whole image: the
        # receptive-field radius rounded up to a multiple of size_divisor
        self.halo = -(-self.unet.context // self.size_divisor) * self.size_divisor
        feats = self.unet.out_channels
        self.numinst_head = conv(feats, 3, 1)
        if variant == "ppp":
            self.decoder = None
            self.out_channels = math.prod(patchshape)
        else:
            if code_shape is None:
                code_shape = default_code_shape(ndim, code_channels)
            elif code_channels is not None and code_channels != math.prod(code_shape):
                raise UserError(f"code_channels {code_channels} != prod(code_shape "
                                 f"{tuple(code_shape)})")
            self.decoder = PatchDecoder(ndim, code_shape, patchshape, decoder_features)
            self.out_channels = self.decoder.code_channels
        self.patch_head = conv(feats, self.out_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, in_channels, [Z,] Y, X)`` -> ``(numinst_logits, patch_or_code_logits)``.

        Every spatial size must be a multiple of :attr:`size_divisor`.
        """
        feats = self.unet(x)
        return self.numinst_head(feats), self.patch_head(feats)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(numinst_logits, features)``: :meth:`forward` without the patch head, whose
        input the features are (a 1x1 convolution: it can run at chosen pixels alone)."""
        feats = self.unet(x)
        return self.numinst_head(feats), feats

    @staticmethod
    def probabilities(outputs):
        """See :func:`probabilities`."""
        return probabilities(outputs)

    def decode(self, code_probs: torch.Tensor) -> torch.Tensor:
        """Dense patch logits ``(B, P, ...)`` from code probabilities ``(B, C, ...)`` (``ppp+dec``).

        Decodes every pixel at once; memory grows with ``B * pixels * decoder size``.
        """
        if self.decoder is None:
            raise UserError("decode needs a ppp+dec network")
        spatial = code_probs.shape[2:]
        flat = code_probs.movedim(1, -1).reshape(-1, code_probs.shape[1])
        patches = self.decoder(flat).reshape((code_probs.shape[0],) + tuple(spatial) + (-1,))
        return patches.movedim(-1, 1)


class ExportNet(nn.Module):
    """``raw (B, 1, [Z,] Y, X)`` -> ``(B, 3 + F, [Z,] Y, X)``: numinst probabilities, features.

    Channels 0-2: softmax over the three numinst classes; channels 3..3+F: the U-Net's last
    feature maps, the input of the patch head. Every spatial size of ``raw`` must be a
    multiple of ``net.size_divisor``; the output keeps it. The patch head and the ``ppp+dec``
    decoder are not part of it (they ship as ``head.npz`` and ``decoder.npz``).
    """

    def __init__(self, net: PatchPerPixNet):
        super().__init__()
        self.unet = net.unet
        self.numinst_head = net.numinst_head

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        feats = self.unet(raw)
        return torch.cat([torch.softmax(self.numinst_head(feats), dim=1), feats], dim=1)
