"""Training losses of PatchPerPix (PATCHPERPIX.md section 2).

Targets have the network's output layout with a batch axis: ``numinst_target``
``(B, 3, [Z,] Y, X)`` one-hot over 0 / 1 / 2+ instances and ``patch_target``
``(B, P, [Z,] Y, X)`` (``ppp_zoo.data.targets.instance_targets`` per image, stacked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .ppp import VARIANTS


def numinst_loss(numinst_logits: torch.Tensor, numinst_target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the 3 numinst classes, averaged over all pixels."""
    _validate_same_shape(numinst_logits, numinst_target, "numinst logits", "numinst target")
    return -(numinst_target * F.log_softmax(numinst_logits, dim=1)).sum(dim=1).mean()


def ppp_loss(patch_logits: torch.Tensor, patch_target: torch.Tensor,
             numinst_target: torch.Tensor, fg_weight: float = 1.0) -> torch.Tensor:
    """Sigmoid cross-entropy on every patch channel, ignoring overlap (2+) pixels.

    Averaged over the valid entries (channels x pixels that are not class 2), the pixels of
    one instance weighted ``fg_weight`` against background pixels; 0 when none.
    """
    _validate_same_shape(patch_logits, patch_target, "patch logits", "patch target")
    _validate_numinst(numinst_target, patch_logits)
    weight = (numinst_target[:, 2:3] < 0.5).to(patch_logits.dtype)
    if fg_weight != 1.0:
        weight = weight * (1.0 + (fg_weight - 1.0) * numinst_target[:, 1:2])
    bce = F.binary_cross_entropy_with_logits(patch_logits, patch_target, reduction="none")
    n_valid = weight.sum() * patch_logits.shape[1]
    return (bce * weight).sum() / n_valid.clamp(min=1.0)


def sample_single_instance_pixels(numinst_target: torch.Tensor, max_samples: int = 1024,
                                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat indices (over batch x pixels) of up to ``max_samples`` random numinst == 1 pixels."""
    index = torch.nonzero(numinst_target[:, 1].reshape(-1) > 0.5).squeeze(1)
    if index.numel() > max_samples:
        pick = torch.randperm(index.numel(), generator=generator, device="cpu")[:max_samples]
        index = index[pick.to(index.device)]
    return index


def _pixels_last(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, ...)`` -> ``(B * pixels, C)``."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def ppp_dec_loss(code_logits: torch.Tensor, decoder: nn.Module, patch_target: torch.Tensor,
                 numinst_target: torch.Tensor, max_samples: int = 1024,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Sigmoid cross-entropy of decoded patches at up to ``max_samples`` numinst == 1 pixels.

    The pixels are drawn over the whole batch (with ``generator``); their codes
    (``sigmoid(code_logits)``) go through ``decoder`` and are compared with their GT patches.
    Returns a zero that still depends on ``code_logits`` when there is no such pixel.
    """
    if code_logits.shape[0] != patch_target.shape[0] or \
            code_logits.shape[2:] != patch_target.shape[2:]:
        raise UserError(f"code logits {tuple(code_logits.shape)} and patch target "
                         f"{tuple(patch_target.shape)} differ in batch or spatial shape")
    _validate_numinst(numinst_target, code_logits)
    if max_samples < 1:
        raise UserError(f"max_samples must be positive, got {max_samples}")
    index = sample_single_instance_pixels(numinst_target, max_samples, generator)
    if index.numel() == 0:
        return code_logits.sum() * 0.0
    codes = torch.sigmoid(_pixels_last(code_logits)[index])
    target = _pixels_last(patch_target)[index]
    return F.binary_cross_entropy_with_logits(decoder(codes), target)


def ppp_sampled_loss(features: torch.Tensor, head: nn.Module, patch_target: torch.Tensor,
                     numinst_target: torch.Tensor, max_samples: int = 4096,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Sigmoid cross-entropy of the patches at up to ``max_samples`` numinst == 1 pixels.

    The pixels are drawn over the whole batch (with ``generator``); the patch ``head`` (the
    network's 1x1 convolution) runs on their ``features`` alone. The assembly reads the
    patches of such pixels only. Returns a zero that still depends on ``features`` when
    there is no such pixel.
    """
    if features.shape[0] != patch_target.shape[0] or \
            features.shape[2:] != patch_target.shape[2:]:
        raise UserError(f"features {tuple(features.shape)} and patch target "
                         f"{tuple(patch_target.shape)} differ in batch or spatial shape")
    _validate_numinst(numinst_target, features)
    index = sample_single_instance_pixels(numinst_target, max_samples, generator)
    if index.numel() == 0:
        return features.sum() * 0.0
    logits = F.linear(_pixels_last(features)[index], head.weight.flatten(1), head.bias)
    return F.binary_cross_entropy_with_logits(logits, _pixels_last(patch_target)[index])


def total_loss(outputs, targets, variant: str, decoder: nn.Module | None = None,
               max_samples: int = 1024, generator: torch.Generator | None = None,
               fg_weight: float = 1.0, head: nn.Module | None = None):
    """numinst loss + patch loss of ``variant``.

    Parameters
    ----------
    outputs : (Tensor, Tensor)
        ``(numinst_logits, patch_logits)`` or ``(numinst_logits, code_logits)``.
    targets : (Tensor, Tensor)
        ``(numinst_target, patch_target)``.
    variant : {"ppp", "ppp+dec"}
    fg_weight : float
        ``ppp``: weight of the pixels of one instance in the patch loss (:func:`ppp_loss`).
    decoder : nn.Module or None
        The patch decoder (``ppp+dec`` only).
    head : nn.Module or None
        ``ppp``: with the patch head given, ``outputs[1]`` are the features it reads and the
        patch loss is taken at up to ``max_samples`` one-instance pixels
        (:func:`ppp_sampled_loss`).

    Returns
    -------
    loss : Tensor
        Scalar to back-propagate.
    parts : dict of str to Tensor
        Detached ``"numinst"`` and ``"patch"`` terms.
    """
    numinst_logits, second = outputs
    numinst_target, patch_target = targets
    if variant == "ppp" and head is not None:
        patch = ppp_sampled_loss(second, head, patch_target, numinst_target, max_samples,
                                 generator)
    elif variant == "ppp":
        patch = ppp_loss(second, patch_target, numinst_target, fg_weight)
    elif variant == "ppp+dec":
        if decoder is None:
            raise UserError("variant 'ppp+dec' needs the decoder")
        patch = ppp_dec_loss(second, decoder, patch_target, numinst_target, max_samples,
                             generator)
    else:
        raise UserError(f"variant must be one of {VARIANTS}, got {variant!r}")
    ni = numinst_loss(numinst_logits, numinst_target)
    return ni + patch, {"numinst": ni.detach(), "patch": patch.detach()}


def _validate_same_shape(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise UserError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} differ")


def _validate_numinst(numinst_target, like):
    expected = (like.shape[0], 3) + tuple(like.shape[2:])
    if tuple(numinst_target.shape) != expected:
        raise UserError(f"numinst target must have shape {expected}, "
                         f"got {tuple(numinst_target.shape)}")
