"""Inference with a trained PatchPerPix checkpoint: image in, instance labels out.

:func:`load_checkpoint` reads a ``.pt`` file written by :func:`ppp_zoo.train.train` into a
:class:`ModelBundle`; :func:`predict_image` normalises an image, runs the network on the
whole image (mirror-padded by the network's ``halo``, see :func:`predict_probabilities`),
turns the outputs into probabilities and assembles instances with the checkpoint's assembly
parameters.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import FORMAT_VERSION, NormalizeConfig
from .errors import UserError, describe
from .model import PatchPerPixNet
from .postprocess import AssemblyParams, assemble

_REQUIRED_KEYS = ("format_version", "model_state", "model_kwargs", "config", "normalize",
                  "assembly")
_DECODE_CHUNK = 16384
#: ``eps`` of the normalisation (the exported model's preprocessing uses the same)
NORMALIZE_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A network ready for inference plus what it needs around it.

    Attributes
    ----------
    model : PatchPerPixNet
        In eval mode, on ``device``.
    normalize : NormalizeConfig
        Intensity normalisation applied to every input image.
    assembly : AssemblyParams
        Instance assembly parameters.
    config : dict
        The full training configuration.
    iteration : int
        Training iteration the weights come from.
    device : torch.device
    """

    model: PatchPerPixNet
    normalize: NormalizeConfig
    assembly: AssemblyParams
    config: dict
    iteration: int = 0
    device: torch.device = torch.device("cpu")


# --------------------------------------------------------------------------- normalisation
def normalize_image(image: np.ndarray, params: NormalizeConfig) -> np.ndarray:
    """Normalise one image as float32, with the formulas of the exported model's preprocessing.

    ``percentile``: ``(x - lo) / (hi - lo + eps)`` with ``lo``, ``hi`` the ``p_low``, ``p_high``
    percentiles of the image (linear interpolation); ``zero_mean_unit_variance``:
    ``(x - mean) / (std + eps)``; ``eps = 1e-6``. These are bioimage.io's ``scale_range`` and
    ``zero_mean_unit_variance`` operations over the spatial axes.

    Examples
    --------
    >>> img = np.arange(100, dtype=np.uint16).reshape(10, 10)
    >>> out = normalize_image(img, NormalizeConfig(p_low=0.0, p_high=100.0))
    >>> float(out.min()), round(float(out.max()), 6)
    (0.0, 1.0)
    """
    x = np.asarray(image, dtype=np.float32)
    if params.mode == "percentile":
        lo, hi = np.percentile(x, [params.p_low, params.p_high])
        return ((x - lo) / (hi - lo + NORMALIZE_EPS)).astype(np.float32)
    if params.mode == "zero_mean_unit_variance":
        return ((x - x.mean()) / (x.std() + NORMALIZE_EPS)).astype(np.float32)
    raise UserError(f"unknown normalisation mode {params.mode!r}")


def as_grayscale(image: np.ndarray, ndim: int) -> np.ndarray:
    """The one-channel ``([Z,] Y, X)`` image a model takes, by the rule of ``ppp-zoo
    segment`` (:func:`ppp_zoo.runtime.segment.image_to_channels_first`): an RGB(A) axis is
    averaged, an axis of size 1 dropped, anything else refused with one clear error."""
    from .runtime.segment import image_to_channels_first

    return image_to_channels_first(image, ndim, 1)[0]


# --------------------------------------------------------------------------- checkpoint
def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a checkpoint written by :func:`ppp_zoo.train.train`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a readable checkpoint or has another ``format_version``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise UserError(f"{path}: not a readable checkpoint ({describe(err)})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED_KEYS):
        raise UserError(f"{path}: not a ppp-zoo checkpoint (missing keys)")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format_version {ckpt['format_version']!r} is not "
                         f"supported (expected {FORMAT_VERSION})")
    return bundle_from_checkpoint(ckpt, device)


def bundle_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu") -> ModelBundle:
    """Build a :class:`ModelBundle` from a loaded checkpoint dict."""
    device = torch.device(device)
    model = PatchPerPixNet(**ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    model.to(device).eval()
    return ModelBundle(model=model, normalize=NormalizeConfig(**ckpt["normalize"]),
                       assembly=AssemblyParams.from_dict(ckpt["assembly"]),
                       config=ckpt["config"], iteration=int(ckpt.get("iteration", 0)),
                       device=device)


# --------------------------------------------------------------------------- prediction
def _pad_for_net(x: np.ndarray, halo: int, divisor: int,
                 border: str) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad for the network: ``border="mirror"`` first mirror-pads ``halo`` pixels on every
    side (numpy ``symmetric``, as bioimage.io tools pad a model's input); then each axis is
    padded at its end (reflect) up to a multiple of ``divisor``."""
    if border not in BORDERS:
        raise UserError(f"border must be one of {BORDERS}, got {border!r}")
    if border == "mirror" and halo:
        x = np.pad(x, halo, mode="symmetric")
    else:
        halo = 0
    crop = tuple(slice(halo, s - halo) for s in x.shape)
    pad = [(0, (-s) % divisor) for s in x.shape]
    if any(b for _, b in pad):
        x = np.pad(x, pad, mode="reflect" if min(x.shape) > 1 else "edge")
    return x, crop


@torch.no_grad()
def _decode_dense(model: PatchPerPixNet, code_probs: torch.Tensor) -> torch.Tensor:
    """Patch probabilities ``(P, ...)`` from code probabilities ``(C, ...)``, in chunks."""
    spatial = code_probs.shape[1:]
    flat = code_probs.reshape(code_probs.shape[0], -1).T
    out = torch.empty((flat.shape[0], model.decoder.n_patch), dtype=torch.float32,
                      device=flat.device)
    for start in range(0, flat.shape[0], _DECODE_CHUNK):
        out[start:start + _DECODE_CHUNK] = torch.sigmoid(
            model.decoder(flat[start:start + _DECODE_CHUNK].float()))
    return out.T.reshape((-1,) + tuple(spatial))


TILE_PIXELS = 1024 * 1024
"""Images with more (padded) pixels than this run through the network in tiles."""
BORDERS = ("none", "mirror")


@torch.no_grad()
def _run_network(bundle: ModelBundle, x: np.ndarray) -> list[np.ndarray]:
    """``(1, 1, ...)`` float32 -> ``[numinst (1, 3, ...), patches or codes (1, C, ...)]``."""
    model = bundle.model
    t = torch.from_numpy(np.ascontiguousarray(x)).to(bundle.device)
    numinst, second = model.probabilities(model(t))
    return [numinst.float().cpu().numpy(), second.float().cpu().numpy()]


@torch.no_grad()
def predict_probabilities(bundle: ModelBundle, image: np.ndarray, normalized: bool = False,
                          tile: tuple[int, ...] | None = None,
                          border: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Network outputs as probabilities: ``numinst (3, ...)`` and ``patches (P, ...)``.

    ``border`` says what the network sees beyond the image border: ``"none"`` (the
    default, also what ``ppp-zoo segment`` does) lets the convolutions zero-pad, as they do
    at the border of every training crop; ``"mirror"`` mirror-pads the normalised image by
    the network's ``halo`` (its receptive field rounded up to a multiple of
    ``size_divisor``), exactly as bioimage.io tools (bioimageio.core) pad the exported
    model's input, and reproduces their outputs. They differ only within ``halo`` pixels of
    the border. ``normalized=True`` skips the normalisation (the image already went through
    it). Large images (more than :data:`TILE_PIXELS`, or any image when ``tile`` is given)
    run in tiles that overlap by twice the halo; only their cores are kept, so the result
    equals the untiled one.
    """
    from .runtime.tiling import run_tiled

    model = bundle.model
    image = as_grayscale(image, model.ndim)
    x = image.astype(np.float32) if normalized else normalize_image(image, bundle.normalize)
    x, crop = _pad_for_net(x, model.halo, model.size_divisor, border)
    was_training = model.training
    model.eval()
    try:
        if tile is None and x.size <= TILE_PIXELS:
            numinst, second = _run_network(bundle, x[None, None])
            numinst, second = numinst[0], second[0]
        else:
            d = model.size_divisor
            numinst, second = run_tiled(
                lambda t: _run_network(bundle, t), x[None, None], min_shape=(d,) * model.ndim,
                step=(d,) * model.ndim, halo=(model.halo,) * model.ndim,
                tile=None if tile is None else tuple(tile))
        if model.decoder is not None:
            second = _decode_dense(model, torch.from_numpy(second).to(bundle.device))
            second = second.float().cpu().numpy()
    finally:
        model.train(was_training)
    full = (slice(None),) + crop
    return np.ascontiguousarray(numinst[full]), np.ascontiguousarray(second[full])


def predict_image(model_bundle: ModelBundle, image: np.ndarray, fast: bool | None = None,
                  tile: tuple[int, ...] | None = None, border: str = "none",
                  **assembly_changes: Any) -> np.ndarray:
    """Segment one image into instances.

    Parameters
    ----------
    model_bundle : ModelBundle
        From :func:`load_checkpoint`.
    image : ndarray, shape ([Z,] Y, X) (or (Y, X, C) RGB)
        Raw image; it is normalised as in training.
    fast : bool or None
        Assemble in fast mode (stride-grid voting) or exact mode; None: as the checkpoint's
        assembly parameters say.
    tile : tuple of int, optional
        Run the network in tiles of this size (see :func:`predict_probabilities`).
    border : {"none", "mirror"}
        What the network sees beyond the border (see :func:`predict_probabilities`).
    **assembly_changes
        Overrides of the checkpoint's :class:`~ppp_zoo.postprocess.AssemblyParams`.

    Returns
    -------
    labels : ndarray
        int32 label image of the image's spatial shape, or a bool ``(N, ...)`` mask stack
        for a model trained on overlapping instances.
    """
    numinst, patches = predict_probabilities(model_bundle, image, tile=tile, border=border)
    params = model_bundle.assembly.replace(fast=fast, **assembly_changes)
    return assemble(numinst, patches, params)
