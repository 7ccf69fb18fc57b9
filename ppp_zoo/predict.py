"""Inference with a trained checkpoint, through the runtime that runs model packages.

A checkpoint is one more engine of :mod:`ppp_zoo.runtime`: :func:`load_segmenter` gives a
:class:`~ppp_zoo.runtime.Segmenter` whose package is the one ``ppp-zoo export`` writes from
the checkpoint (:func:`checkpoint_package`: the declared preprocessing, tile sizes and halo,
the patch head and decoder as numpy code, the assembly parameters) and whose engine runs
the PyTorch network (:class:`CheckpointEngine`) where the package runs its ONNX or
TorchScript export. ``ppp-zoo predict``, training validation, threshold tuning and
``ppp-zoo segment`` therefore share the normalisation, tiling, head, decoding and assembly;
they differ only in the engine's floating-point arithmetic.

:func:`load_checkpoint` reads a ``.pt`` file written by :func:`ppp_zoo.train.train` into a
:class:`Checkpoint`; :func:`predict_image` segments an image with it.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import FORMAT_VERSION, NormalizeConfig
from .errors import UserError, describe
from .model import ExportNet, PatchPerPixNet
from .postprocess import AssemblyParams
from .postprocess.decode import decoder_from_arrays, load_head
from .postprocess.model_package import CURRENT_FORMAT, ModelParams
from .runtime.engine import Engine
from .runtime.package import ModelPackage
from .runtime.preprocess import preprocess
from .runtime.segment import Segmenter, image_to_channels_first

_REQUIRED_KEYS = ("format_version", "model_state", "model_kwargs", "config", "normalize",
                  "assembly")
#: ``eps`` of the normalisation (the exported model's preprocessing uses the same)
NORMALIZE_EPS = 1e-6
#: id of the single output tensor (numinst probabilities, then the U-Net features)
OUTPUT_ID = "prediction"
#: a space axis of the package input is at least this large at its minimal declared size
MIN_INPUT_SIDE = {2: 16, 3: 8}
BORDERS = ("none", "mirror")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
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
def preprocessing_ops(params: NormalizeConfig, ndim: int) -> list[dict]:
    """The preprocessing that a package declares for a checkpoint's normalisation (and
    that ``export`` writes into rdf.yaml): ``ensure_dtype`` float32, then ``scale_range``
    (percentile mode) or ``zero_mean_unit_variance`` over the space axes with ``eps =
    1e-6``, then float32 again (bioimageio.spec appends that one).

    >>> [op["id"] for op in preprocessing_ops(NormalizeConfig(), 2)]
    ['ensure_dtype', 'scale_range', 'ensure_dtype']
    """
    axes = ["z", "y", "x"][3 - ndim:]
    if params.mode == "percentile":
        norm = {"id": "scale_range", "kwargs": {"axes": axes, "min_percentile": params.p_low,
                                                "max_percentile": params.p_high,
                                                "eps": NORMALIZE_EPS}}
    elif params.mode == "zero_mean_unit_variance":
        norm = {"id": "zero_mean_unit_variance", "kwargs": {"axes": axes, "eps": NORMALIZE_EPS}}
    else:
        raise UserError(f"unknown normalisation mode {params.mode!r}")
    dtype = {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}
    return [dtype, norm, dict(dtype)]


def normalize_image(image: np.ndarray, params: NormalizeConfig) -> np.ndarray:
    """Normalise one image ``([Z,] Y, X)`` as float32 with the runtime's preprocessing
    (:func:`ppp_zoo.runtime.preprocess`) of the operations :func:`preprocessing_ops`
    declares: the one normalisation of training, ``predict``, ``segment`` and the
    exported package.

    ``percentile``: ``(x - lo) / (hi - lo + eps)`` with ``lo``, ``hi`` the ``p_low``,
    ``p_high`` percentiles of the image (linear interpolation, in float64);
    ``zero_mean_unit_variance``: ``(x - mean) / (std + eps)``; ``eps = 1e-6``.

    Examples
    --------
    >>> img = np.arange(100, dtype=np.uint16).reshape(10, 10)
    >>> out = normalize_image(img, NormalizeConfig(p_low=0.0, p_high=100.0))
    >>> float(out.min()), round(float(out.max()), 6), out.dtype.name
    (0.0, 1.0, 'float32')
    """
    x = np.asarray(image)
    ops = preprocessing_ops(params, x.ndim)
    axes = ("batch", "channel") + ("z", "y", "x")[3 - x.ndim:]
    return preprocess(x[None, None], axes, ops)[0, 0]


def as_grayscale(image: np.ndarray, ndim: int) -> np.ndarray:
    """The one-channel ``([Z,] Y, X)`` image a model takes, by the rule of ``ppp-zoo
    segment`` (:func:`ppp_zoo.runtime.segment.image_to_channels_first`): an RGB(A) axis is
    averaged, an axis of size 1 dropped, anything else refused with one clear error."""
    return image_to_channels_first(image, ndim, 1)[0]


# --------------------------------------------------------------------------- checkpoint
def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
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


def bundle_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu") -> Checkpoint:
    """Build a :class:`Checkpoint` from a loaded checkpoint dict."""
    device = torch.device(device)
    model = PatchPerPixNet(**ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    model.to(device).eval()
    return Checkpoint(model=model, normalize=NormalizeConfig(**ckpt["normalize"]),
                       assembly=AssemblyParams.from_dict(ckpt["assembly"]),
                       config=ckpt["config"], iteration=int(ckpt.get("iteration", 0)),
                       device=device)


# --------------------------------------------------------------------------- as a package
@dataclasses.dataclass(frozen=True)
class Geometry:
    """The input sizes a checkpoint's package declares: ``min_size + n * step`` per space
    axis, and the output ``halo`` (the receptive-field radius rounded up to ``step``)."""

    ndim: int
    step: int
    halo: int
    min_size: int

    @property
    def axes(self) -> list[str]:
        return ["z", "y", "x"][3 - self.ndim:]


def package_geometry(net: PatchPerPixNet) -> Geometry:
    """:class:`Geometry` of ``net``: the smallest declared size leaves output after the halo
    is discarded on both sides."""
    step, halo = net.size_divisor, net.halo
    lowest = max(MIN_INPUT_SIDE[net.ndim], 2 * halo + 1)
    return Geometry(net.ndim, step, halo, -(-lowest // step) * step)


def head_arrays(net: PatchPerPixNet) -> dict[str, np.ndarray]:
    """The patch head as ``head.npz`` holds it: ``weight (K, F)``, ``bias (K,)``,
    ``patchshape``."""
    head = net.patch_head
    return {"weight": head.weight.detach().reshape(head.out_channels, -1).cpu().numpy()
                      .astype(np.float32),
            "bias": head.bias.detach().cpu().numpy().astype(np.float32),
            "patchshape": np.asarray(net.patchshape, np.int64)}


def decoder_arrays(net: PatchPerPixNet) -> dict[str, np.ndarray] | None:
    """The ``ppp+dec`` decoder as ``decoder.npz`` holds it (None for ``ppp``)."""
    if net.decoder is None:
        return None
    return {**net.decoder.to_arrays(), "code_shape": np.asarray(net.decoder.code_shape, np.int64),
            "patchshape": np.asarray(net.patchshape, np.int64),
            "features": np.asarray(decoder_features(net.decoder), np.int64)}


def decoder_features(decoder) -> list[int]:
    """Hidden layer widths of a :class:`~ppp_zoo.model.PatchDecoder`."""
    convs = [m for m in decoder.net if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    return [int(c.out_channels) for c in convs[:-1:2]]


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez`` of ``arrays`` into memory: the bytes of the package file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def patchperpix_info(bundle: Checkpoint, *, training: dict | None = None,
                     metrics: dict | None = None, hashes: dict | None = None,
                     version: str = "") -> dict:
    """``config.patchperpix`` of the package ``export`` writes from ``bundle`` (the layout
    is documented in :mod:`ppp_zoo.export`); ``hashes`` are the SHA-256 of ``head.npz`` and
    ``decoder.npz`` (None in memory)."""
    net = bundle.model
    geometry = package_geometry(net)
    hashes = hashes or {}
    decoder = None
    if net.decoder is not None:
        decoder = {"source": "decoder.npz", "sha256": hashes.get("decoder.npz"),
                   "code_shape": list(net.decoder.code_shape),
                   "features": decoder_features(net.decoder)}
    n_features = int(net.unet.out_channels)
    return {
        "format": CURRENT_FORMAT,
        "variant": net.variant,
        "ndim": net.ndim,
        "patchshape": list(net.patchshape),
        "assembly": bundle.assembly.to_dict(),
        "output": {"tensor": OUTPUT_ID,
                   "channels": {"numinst": [0, 3], "features": [3, 3 + n_features]}},
        "head": {"source": "head.npz", "sha256": hashes.get("head.npz"),
                 "activation": "sigmoid",
                 "produces": "codes" if net.decoder is not None else "patches"},
        "decoder": decoder,
        "postprocess": {"package": "ppp-zoo", "module": "ppp_zoo.postprocess",
                        "version": version},
        "normalize": dataclasses.asdict(bundle.normalize),
        "halo": [geometry.halo] * geometry.ndim,
        "min_shape": [geometry.min_size] * geometry.ndim,
        "step": [geometry.step] * geometry.ndim,
        "training": dict(training if training is not None else
                         {"iterations": bundle.iteration}),
        "metrics": dict(metrics or {}),
    }


@dataclasses.dataclass(frozen=True)
class CheckpointPackage(ModelPackage):
    """The package ``export`` would write from a checkpoint, held in memory: what the
    runtime reads of a package, with the head and decoder decoded already (there are no
    files to read)."""

    params: ModelParams | None = None

    @property
    def model_params(self) -> ModelParams:  # type: ignore[override]
        return self.params

    def read_bytes(self, name: str) -> bytes:
        raise UserError(f"{self.source}: a checkpoint has no package file {name!r}")


def checkpoint_package(bundle: Checkpoint, source: str | os.PathLike = "checkpoint"
                       ) -> CheckpointPackage:
    """The in-memory :class:`CheckpointPackage` of ``bundle``: the preprocessing, sizes,
    halo, head, decoder and assembly parameters of its exported package."""
    net = bundle.model
    geometry = package_geometry(net)
    info = patchperpix_info(bundle)
    arrays = decoder_arrays(net)
    decoder = decoder_from_arrays(arrays) if arrays is not None else None
    params = ModelParams(assembly=bundle.assembly, info=info,
                         decoder=load_head(npz_bytes(head_arrays(net)), decoder))
    return CheckpointPackage(
        source=Path(source), name=f"checkpoint {Path(source).name}", rdf={},
        input_id="raw", space_axes=tuple(geometry.axes), n_channels=1,
        min_shape=(geometry.min_size,) * geometry.ndim, step=(geometry.step,) * geometry.ndim,
        halo=(geometry.halo,) * geometry.ndim,
        preprocessing=tuple(preprocessing_ops(bundle.normalize, geometry.ndim)),
        output_ids=(OUTPUT_ID,), weights={}, config=info, params=params)


class CheckpointEngine(Engine):
    """The runtime engine of a checkpoint: the PyTorch network as it is exported
    (:class:`~ppp_zoo.model.ExportNet`: numinst probabilities and features), run in eval
    mode (a network in training is put back into training mode afterwards)."""

    name = "checkpoint"
    provider = "torch"

    def __init__(self, bundle: Checkpoint):
        self._net = ExportNet(bundle.model)
        self._torch_device = bundle.device
        self.device = "cuda" if torch.device(bundle.device).type == "cuda" else "cpu"

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        was_training = self._net.training
        self._net.eval()
        try:
            t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self._torch_device)
            return [self._net(t).float().cpu().numpy()]
        finally:
            self._net.train(was_training)


def load_segmenter(checkpoint: str | os.PathLike | Checkpoint,
                   device: str | torch.device = "cpu") -> Segmenter:
    """A :class:`~ppp_zoo.runtime.Segmenter` that runs a checkpoint (a ``.pt`` path or a
    loaded :class:`Checkpoint`) with the runtime's preprocessing, tiling, head, decoding
    and assembly."""
    if isinstance(checkpoint, Checkpoint):
        bundle, source = checkpoint, "checkpoint"
    else:
        bundle, source = load_checkpoint(checkpoint, device), checkpoint
    return Segmenter(checkpoint_package(bundle, source), CheckpointEngine(bundle))


# --------------------------------------------------------------------------- prediction
def _check_border(border: str) -> None:
    if border not in BORDERS:
        raise UserError(f"border must be one of {BORDERS}, got {border!r}")


def network_outputs(seg: Segmenter, image: np.ndarray, *, normalized: bool = False,
                    tile: tuple[int, ...] | None = None,
                    border: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """``numinst (3, ...)`` and the per-pixel output (features) of ``seg`` on one image.

    ``border="mirror"`` mirror-pads the normalised image by the halo first (numpy
    ``symmetric``, as bioimageio.core pads a model's input) and crops the outputs back;
    ``"none"`` runs the image as ``segment`` does. ``normalized=True``: ``image`` went
    through the normalisation already.
    """
    _check_border(border)
    pkg = seg.package
    img = as_grayscale(image, pkg.ndim)
    x = img.astype(np.float32)[None, None] if normalized else seg.preprocess(img[None])
    halo = pkg.halo if border == "mirror" else (0,) * pkg.ndim
    if any(halo):
        x = np.pad(x, [(0, 0), (0, 0)] + [(h, h) for h in halo], mode="symmetric")
    numinst, values, _ = seg.infer(x, tile)
    crop = (slice(None),) + tuple(slice(h, s - h) for h, s in zip(halo, numinst.shape[1:]))
    return np.ascontiguousarray(numinst[crop]), np.ascontiguousarray(values[crop])


def predict_probabilities(bundle: Checkpoint, image: np.ndarray, normalized: bool = False,
                          tile: tuple[int, ...] | None = None,
                          border: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Network outputs as probabilities: ``numinst (3, ...)`` and dense ``patches (P, ...)``,
    computed as the exported package computes them (:func:`load_segmenter`; the patch head
    and decoder run in numpy).

    ``border`` says what the network sees beyond the image border: ``"none"`` (the
    default, also what ``ppp-zoo segment`` does) lets the convolutions zero-pad, as they do
    at the border of every training crop; ``"mirror"`` mirror-pads the normalised image by
    the network's ``halo``, exactly as bioimage.io tools (bioimageio.core) pad the exported
    model's input, and reproduces their outputs. They differ only within ``halo`` pixels of
    the border. ``normalized=True`` skips the normalisation. Tiles (``tile``, or the
    runtime's default size) overlap by twice the halo; only their cores are kept, so the
    result equals the untiled one.
    """
    seg = load_segmenter(bundle)
    numinst, values = network_outputs(seg, image, normalized=normalized, tile=tile,
                                      border=border)
    return numinst, seg.params.patches(numinst, values)


def predict_image(model_bundle: Checkpoint, image: np.ndarray, fast: bool | None = None,
                  tile: tuple[int, ...] | None = None, border: str = "none",
                  **assembly_changes: Any) -> np.ndarray:
    """Segment one image into instances, as ``ppp-zoo segment --scale 1`` segments it with
    the package exported from this checkpoint.

    Parameters
    ----------
    model_bundle : Checkpoint
        From :func:`load_checkpoint`.
    image : ndarray, shape ([Z,] Y, X) (or (Y, X, C) RGB)
        Raw image; it is normalised as in training.
    fast : bool or None
        Assemble in fast mode (stride-grid voting) or exact mode; None: as the checkpoint's
        assembly parameters say.
    tile : tuple of int, optional
        Run the network in tiles of this size.
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
    _check_border(border)
    seg = load_segmenter(model_bundle)
    if border == "none":
        return seg.segment(image, tile=tile, fast=fast, **assembly_changes).labels
    numinst, values = network_outputs(seg, image, tile=tile, border=border)
    params = seg.package.assembly_params(fast=fast, **assembly_changes)
    return seg.assemble(numinst, values, params)
