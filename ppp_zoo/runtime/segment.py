"""Image in, instance labels out, with a model package: the library side of ``ppp-zoo segment``.

Steps (each timed): check the image against the model's input (dimensions, channels,
values) -> optional resampling by ``scale`` -> the package's preprocessing -> tiled
inference -> decoding of codes to patches (``ppp+dec``) -> instance assembly with the
package's parameters (blockwise, with bounded memory, for large images) -> labels back on
the input's grid (nearest neighbour).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..postprocess.labels import instance_sizes, median_object_diameter, relabel_consecutive
from .engine import Device, Engine, EngineName, create_engine
from .package import ModelPackage, open_package
from .preprocess import preprocess, validate_preprocessing
from .tiling import Progress, run_tiled

MIN_SIZE = 4
"""Smallest size of a space axis (after scaling) that ``segment`` accepts."""
BLOCKWISE_PIXELS = {2: 512 * 512, 3: 96 * 96 * 96}
"""Images with more pixels are assembled blockwise."""
FLOAT16_BYTES = 1 << 30
"""Network outputs larger than this (as float32) are kept as float16."""
SCALE_HINT = 1.5
"""Suggest another ``scale`` when objects differ from the training size by this factor."""
TILE_BYTES = 96 * 2**20
"""Default tiles hold at most about this many bytes of network output."""
MIN_DIAMETER = 4.0
"""Objects measured smaller than this (pixels) give no ``scale`` suggestion."""


class InputError(ValueError):
    """An image that this model cannot segment."""


@dataclasses.dataclass(frozen=True)
class SegmentResult:
    """Output of :func:`segment_image`.

    Attributes
    ----------
    labels : ndarray
        Label image on the input's space grid (int32), or a bool ``(N, ...)`` mask stack
        for a model with overlapping instances.
    n_instances : int
    timings : dict
        Seconds per stage.
    scale : float
        The resampling factor used.
    n_tiles : int
        Network runs.
    notes : tuple of str
        Remarks for the user (blank image, a scale suggestion).
    suggested_scale : float or None
        A ``scale`` that would bring the objects to the training size, when they differ
        from it by more than :data:`SCALE_HINT`.
    outputs : dict or None
        Raw network outputs (at the processing scale) when asked for.
    constant_image : bool
        The image had one value everywhere: nothing was run, no instances.
    """

    labels: np.ndarray
    n_instances: int
    timings: dict
    scale: float = 1.0
    n_tiles: int = 0
    notes: tuple[str, ...] = ()
    suggested_scale: float | None = None
    outputs: dict | None = None
    constant_image: bool = False

    def summary(self) -> dict:
        """A JSON-ready dict (without the arrays)."""
        return {"n_instances": self.n_instances, "shape": list(self.labels.shape),
                "scale": self.scale, "n_tiles": self.n_tiles,
                "suggested_scale": self.suggested_scale, "notes": list(self.notes),
                "constant_image": self.constant_image,
                "timings": {k: round(v, 4) for k, v in self.timings.items()}}


# --------------------------------------------------------------------------- input checks
def as_model_input(image: np.ndarray, package: ModelPackage) -> np.ndarray:
    """Bring an image to ``(C, [Z,] Y, X)`` as the model's input axes say.

    See :func:`image_to_channels_first`; raises :class:`InputError`.
    """
    out = image_to_channels_first(image, package.ndim, package.n_channels)
    _check_size(out.shape[1:], "image")
    return out


def image_to_channels_first(image: np.ndarray, ndim: int, channels: int = 1) -> np.ndarray:
    """The one rule for what a model of ``ndim`` space axes and ``channels`` input channels
    accepts, as ``(C, [Z,] Y, X)``.

    A one-channel model accepts ``([Z,] Y, X)``, a trailing RGB(A) axis (averaged) or a
    leading/trailing axis of size 1; a model with C channels accepts the channels first or
    last. Anything else (e.g. ``(Y, X, 2)`` for a one-channel model) is refused, never
    silently cut.

    Raises
    ------
    InputError
        Empty, non-numeric or non-finite images, wrong dimensions or channels.

    Examples
    --------
    >>> image_to_channels_first(np.zeros((5, 6, 3)), 2).shape
    (1, 5, 6)
    >>> image_to_channels_first(np.zeros((5, 6, 2)), 2)
    Traceback (most recent call last):
    ...
    ppp_zoo.runtime.segment.InputError: image of shape (5, 6, 2) has no channel axis of size 1: this 2D model takes (Y, X) images
    """
    image = np.asarray(image)
    nd, c = ndim, channels
    want = f"({'Z, ' if nd == 3 else ''}Y, X)"
    if image.dtype.kind not in "biuf":
        raise InputError(f"image must be numeric, got dtype {image.dtype}")
    if image.size == 0:
        raise InputError(f"empty image (shape {image.shape})")
    if image.dtype.kind == "b":
        image = image.astype(np.uint8)
    if image.ndim == nd:
        if c != 1:
            raise InputError(f"the model needs {c} channels, the image of shape {image.shape} "
                             "has none")
        out = image[None]
    elif image.ndim == nd + 1:
        if c == 1 and image.shape[-1] in (3, 4) and nd == 2:
            out = image[..., :3].astype(np.float32).mean(axis=-1)[None]
        elif image.shape[0] == c:
            out = image
        elif image.shape[-1] == c:
            out = np.moveaxis(image, -1, 0)
        else:
            raise InputError(f"image of shape {image.shape} has no channel axis of size {c}: "
                             f"this {nd}D model takes {want} images"
                             + (f" with {c} channels" if c > 1 else ""))
    else:
        raise InputError(f"image of shape {image.shape} has {image.ndim} dimensions: this "
                         f"{nd}D model takes {want} images"
                         + (f" with {c} channels" if c > 1 else ""))
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        raise InputError("image contains NaN or infinite values")
    return out


def _check_size(spatial: Sequence[int], what: str) -> None:
    if min(spatial) < MIN_SIZE:
        raise InputError(f"{what} of shape {tuple(spatial)} is too small: every space axis "
                         f"needs at least {MIN_SIZE} pixels")


def _rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """Resample ``(C, ...)`` by ``scale`` on the space axes (linear, anti-aliased down)."""
    from skimage.transform import rescale

    out = rescale(image.astype(np.float32), scale, order=1, preserve_range=True,
                  anti_aliasing=scale < 1, channel_axis=0, mode="reflect")
    return out.astype(np.float32)


def _labels_to_grid(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resampling of labels (or a mask stack) to ``shape``."""
    if labels.shape[-len(shape):] == shape:
        return labels
    idx = np.ix_(*[np.minimum((np.arange(t) + 0.5) * s / t, s - 1).astype(np.intp)
                   for s, t in zip(labels.shape[-len(shape):], shape)])
    if labels.ndim > len(shape):  # mask stack
        return np.stack([m[idx] for m in labels]) if len(labels) else \
            np.zeros((0,) + shape, labels.dtype)
    return labels[idx]


def _median_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent diameter of the instances found (None for fewer than 5)."""
    masks = labels.dtype == bool
    return median_object_diameter(instance_sizes(labels, overlapping=masks),
                                  labels.ndim - 1 if masks else labels.ndim, min_count=5)


# --------------------------------------------------------------------------- segmenter
class Segmenter:
    """A model package loaded for inference (package + engine + decoder).

    Create with :func:`load_segmenter`; release with :meth:`close` or a ``with`` block.
    """

    def __init__(self, package: ModelPackage, engine: Engine):
        self.package = package
        self.engine = engine
        self.params = package.model_params  # assembly parameters, head and decoder

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Segmenter:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def segment(self, image: np.ndarray, *, tile: Sequence[int] | None = None,
                scale: float = 1.0, fast: bool | None = None,
                block: Sequence[int] | None = None, keep_outputs: bool = False,
                tile_progress: Progress = None, **assembly_changes: Any) -> SegmentResult:
        """See :func:`segment_image`."""
        pkg = self.package
        timings: dict[str, float] = {}
        t = time.perf_counter()
        img = as_model_input(image, pkg)
        in_shape = tuple(img.shape[1:])
        if not (scale > 0 and math.isfinite(scale)):
            raise InputError(f"scale must be a positive number, got {scale}")
        if scale != 1.0:
            img = _rescale(img, scale)
            _check_size(img.shape[1:], f"image scaled by {scale}")
        timings["rescale"] = time.perf_counter() - t
        params = pkg.assembly_params(fast=fast, **assembly_changes)
        if float(img.max()) == float(img.min()):
            shape = ((0,) + in_shape) if params.overlapping else in_shape
            labels = np.zeros(shape, bool if params.overlapping else np.int32)
            return SegmentResult(labels, 0, timings, scale, 0,
                                 ("constant image: no instances",), constant_image=True)

        t = time.perf_counter()
        x = preprocess(img[None], ("batch", "channel") + pkg.space_axes, pkg.preprocessing)
        del img
        timings["preprocess"] = time.perf_counter() - t

        t = time.perf_counter()
        raw, n_tiles = self._infer(x, tile, tile_progress)
        numinst, second = self.params.split(raw[0]) if len(raw) == 1 else raw[:2]
        n_pix = math.prod(x.shape[2:])
        del x
        timings["inference"] = time.perf_counter() - t

        labels = self._assemble(numinst, second, params, timings,
                                blockwise=not params.overlapping and (
                                    block is not None or n_pix > BLOCKWISE_PIXELS[pkg.ndim]),
                                block=block)
        suggested, notes = _scale_hint(labels, scale, pkg.object_diameter)

        t = time.perf_counter()
        labels = _labels_to_grid(labels, in_shape)
        if labels.dtype != bool and scale != 1.0:
            labels = relabel_consecutive(labels)  # instances may vanish when scaled down
        timings["rescale"] += time.perf_counter() - t
        n = labels.shape[0] if labels.dtype == bool else int(labels.max(initial=0))
        if n == 0:
            notes.append("no instances found")
        outputs = dict(zip(pkg.output_ids, raw)) if keep_outputs else None
        return SegmentResult(labels, n, timings, scale, n_tiles, tuple(notes), suggested,
                             outputs)

    def _infer(self, x: np.ndarray, tile, progress: Progress):
        """Tiled inference: the outputs without batch axis (float16 when large), tiles run."""
        pkg = self.package
        channels = output_channels(pkg)
        big = channels * math.prod(x.shape[2:]) * 4 > FLOAT16_BYTES
        n_tiles = 0

        def engine(tile_in: np.ndarray) -> list[np.ndarray]:
            nonlocal n_tiles
            n_tiles += 1
            return self.engine(tile_in)

        outs = run_tiled(engine, x, min_shape=pkg.min_shape, step=pkg.step, halo=pkg.halo,
                         tile=tile or default_tile(pkg.ndim, channels),
                         dtype=np.float16 if big else np.float32, progress=progress)
        return outs, n_tiles

    def _assemble(self, numinst, second, params, timings: dict, *, blockwise: bool, block):
        """Decode features or codes into patches and assemble; blockwise decoding happens
        per block, inside the assembly's time."""
        from ..postprocess import assemble, assemble_blockwise

        t = time.perf_counter()
        model = dataclasses.replace(self.params, assembly=params)
        patches = model.patches(numinst, second, lazy=blockwise)
        timings["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        if blockwise:
            labels = assemble_blockwise(numinst, patches, params, block_shape=block)
        else:
            labels = assemble(numinst, patches, params)
        timings["assembly"] = time.perf_counter() - t
        return labels


def _scale_hint(labels: np.ndarray, scale: float,
                trained: float | None) -> tuple[float | None, list[str]]:
    """A ``scale`` suggestion when the objects found differ from the training size."""
    measured = _median_diameter(labels)
    # fragments of a few pixels say more about a failed segmentation than about scale
    if measured is None or measured < MIN_DIAMETER or not trained:
        return None, []
    ratio = trained / measured
    if 1 / SCALE_HINT <= ratio <= SCALE_HINT:
        return None, []
    suggested = round(scale * ratio, 2)
    return suggested, [(f"objects measure about {measured / scale:.0f} px across, the model was "
                       f"trained on about {trained:.0f} px: try --scale {suggested}")]


def output_channels(package: ModelPackage) -> int:
    """Channels of the package's outputs together (numinst + features, patches or codes)."""
    return package.n_output_channels


def default_tile(ndim: int, channels: int) -> tuple[int, ...]:
    """Tile side for ``channels`` output channels: the largest of 512 (2D) or 128 (3D) whose
    output stays within :data:`TILE_BYTES`, but at least 128 (2D) or 32 (3D).

    >>> default_tile(2, 8), default_tile(2, 292), default_tile(3, 130)
    ((512, 512), (293, 293), (57, 57, 57))
    """
    lo, hi = (128, 512) if ndim == 2 else (32, 128)
    side = int((TILE_BYTES / (4 * max(channels, 1))) ** (1 / ndim))
    return (min(hi, max(lo, side)),) * ndim


def load_segmenter(model: str | os.PathLike | ModelPackage, engine: EngineName = "onnx",
                   device: Device = "auto") -> Segmenter:
    """Open a model package and load its weights for ``engine`` on ``device``."""
    package = model if isinstance(model, ModelPackage) else open_package(model)
    validate_preprocessing(package.preprocessing)
    return Segmenter(package, create_engine(package, engine, device))


def segment_image(model: str | os.PathLike | ModelPackage | Segmenter, image: np.ndarray, *,
                  engine: EngineName = "onnx", device: Device = "auto",
                  tile: Sequence[int] | None = None, scale: float = 1.0,
                  fast: bool | None = None,
                  block: Sequence[int] | None = None, keep_outputs: bool = False,
                  tile_progress: Progress = None, **assembly_changes: Any) -> SegmentResult:
    """Segment one image into instances with a PatchPerPix model package.

    Parameters
    ----------
    model : path, ModelPackage or Segmenter
        A package (.zip or folder), an opened one, or a loaded :class:`Segmenter` (reused
        across images without reloading).
    image : ndarray
        ``([Z,] Y, X)``, with channels first or last for multi-channel models (a 2D RGB(A)
        image is averaged for a one-channel model); any numeric dtype.
    engine : {"onnx", "torchscript"}
    device : {"auto", "cpu", "cuda"}
    tile : sequence of int, optional
        Tile size for inference (rounded to a size the model accepts).
    scale : float
        Resample the image by this factor before the model; labels come back on the
        input's grid.
    fast : bool or None
        Assemble in fast (True) or exact (False) mode; None: as the package says.
    block : sequence of int, optional
        Assemble blockwise with this block size (default: blockwise above
        :data:`BLOCKWISE_PIXELS`).
    keep_outputs : bool
        Keep the raw network outputs in the result.
    tile_progress : callable, optional
        Called with (tiles done, tiles total).
    **assembly_changes
        Overrides of the package's assembly parameters.

    Returns
    -------
    SegmentResult
    """
    if isinstance(model, Segmenter):
        return model.segment(image, tile=tile, scale=scale, fast=fast, block=block,
                             keep_outputs=keep_outputs, tile_progress=tile_progress,
                             **assembly_changes)
    with load_segmenter(model, engine, device) as seg:
        return seg.segment(image, tile=tile, scale=scale, fast=fast, block=block,
                           keep_outputs=keep_outputs, tile_progress=tile_progress,
                           **assembly_changes)
