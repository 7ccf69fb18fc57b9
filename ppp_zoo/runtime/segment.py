"""Image in, instance labels out, with a model package: the library side of ``ppp-zoo segment``.

Steps (each timed): check the image against the model's input (dimensions, channels,
values) -> optional resampling by ``scale`` (``"auto"``: measured, see
:meth:`Segmenter.segment`) -> the package's preprocessing -> tiled
inference -> decoding of codes to patches (``ppp+dec``) -> instance assembly with the
package's parameters (blockwise, with bounded memory, for large images) -> labels back on
the input's grid (nearest neighbour).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..postprocess.labels import median_object_size, relabel_consecutive
from .engine import Device, Engine, EngineName, create_engine
from .package import ModelPackage, open_package
from .preprocess import preprocess, validate_preprocessing
from .tiling import Progress, run_tiled

MIN_IMAGE_SIDE = 4
"""Smallest size of a space axis of an image (after scaling) that ``segment`` accepts."""
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
AUTO_SCALE_PROBES = (1.0, 0.5, 0.25)
"""``scale="auto"`` segments at these scales to measure the objects."""
AUTO_SCALE_MIN_RATIO = 2.5
"""A probe counts when its objects measure at least the training diameter over this."""
AUTO_SCALE_STEPS = 4
"""``scale="auto"`` chooses powers of 2 ** (1 / this): quarter octaves, finer than a network
trained with zoom augmentation tells apart, and 1 (no resampling) for objects within
about 9 % of the training size."""
AUTO_SCALE_TOLERANCE = 1.25
"""``scale="auto"`` is confident when the kept pass's objects measure within this factor of
the training diameter."""
AUTO_SCALE_RANGE = {2: (0.25, 4.0), 3: (0.4, 2.5)}
"""The scales ``scale="auto"`` may choose (2D, 3D)."""


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
    assembly_device : str
        Where the assembly kernels really ran: ``"cpu"``, ``"cuda"`` or ``"cuda+cpu"``
        (:attr:`ppp_zoo.postprocess.AssemblyResult.device`).
    auto_scale : dict or None
        With ``scale="auto"``: ``confident`` (the objects of the chosen pass measure within
        :data:`AUTO_SCALE_TOLERANCE` of the training size), ``trained_diameter``,
        ``diameter`` (the objects' median diameter on the input grid), and ``passes``
        (``[scale, measured diameter at that scale or None]`` per segmentation pass).
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
    auto_scale: dict | None = None
    assembly_device: str = "cpu"

    def summary(self) -> dict:
        """A JSON-ready dict (without the arrays)."""
        return {"n_instances": self.n_instances, "shape": list(self.labels.shape),
                "scale": self.scale, "auto_scale": self.auto_scale, "n_tiles": self.n_tiles,
                "suggested_scale": self.suggested_scale, "notes": list(self.notes),
                "constant_image": self.constant_image, "assembly_device": self.assembly_device,
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
    if min(spatial) < MIN_IMAGE_SIDE:
        raise InputError(f"{what} of shape {tuple(spatial)} is too small: every space axis "
                         f"needs at least {MIN_IMAGE_SIDE} pixels")


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


_ACROSS = {"diameter": "across", "width": "wide"}


def _median_diameter(labels: np.ndarray, measure: str = "diameter") -> float | None:
    """Median size of the instances found, measured as the package's training size
    (equivalent diameter or width; None for fewer than 5)."""
    return median_object_size(labels, overlapping=labels.dtype == bool, measure=measure,
                              min_count=5)


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
                scale: float | str = 1.0, fast: bool | None = None,
                block: Sequence[int] | None = None, keep_outputs: bool = False,
                tile_progress: Progress = None,
                stage_progress: Callable[[str], None] | None = None, tta: bool = False,
                **assembly_changes: Any) -> SegmentResult:
        """See :func:`segment_image`.

        ``scale="auto"`` measures the median diameter of the instances found in probe
        passes and segments at the scale that brings them to the package's training
        diameter (within :data:`AUTO_SCALE_RANGE`); see :meth:`_segment_auto`. The
        estimate is confident when the kept pass's objects measure within
        :data:`AUTO_SCALE_TOLERANCE` of the training size; otherwise a note says so.
        """
        pkg = self.package
        t = time.perf_counter()
        img = as_model_input(image, pkg)
        auto = isinstance(scale, str)
        if auto and scale != "auto":
            raise InputError(f"scale must be a positive number or 'auto', got {scale!r}")
        if not auto and not (scale > 0 and math.isfinite(scale)):
            raise InputError(f"scale must be a positive number or 'auto', got {scale}")
        # fast mode votes on a grid that a mirror of an even-sized image moves by a pixel:
        # test-time augmentation assembles exactly unless told otherwise, so that its
        # averaged outputs give the same instances in every orientation
        params = pkg.assembly_params(fast=False if tta and fast is None else fast,
                                     **assembly_changes)
        if float(img.max()) == float(img.min()):
            in_shape = tuple(img.shape[1:])
            shape = ((0,) + in_shape) if params.overlapping else in_shape
            labels = np.zeros(shape, bool if params.overlapping else np.int32)
            return SegmentResult(labels, 0, {"rescale": time.perf_counter() - t},
                                 1.0 if auto else scale, 0, ("constant image: no instances",),
                                 constant_image=True)
        run = dict(tile=tile, fast=fast, block=block, keep_outputs=keep_outputs,
                   tile_progress=tile_progress, stage_progress=stage_progress, params=params,
                   tta=tta)
        if not auto:
            result, _ = self._segment_at(img, scale, hint=True, **run)
            return result
        return self._segment_auto(img, run)

    def _segment_auto(self, img: np.ndarray, run: dict) -> SegmentResult:
        """``scale="auto"``: probe passes at scales 1/4, 1/2 and 1 (coarse first, skipping
        those whose image would be too small to hold a few objects of the training size),
        then the pass at the scale that brings the objects to the training size, rounded
        to quarter octaves (:data:`AUTO_SCALE_STEPS`; a probe already at that scale is
        kept).

        A network shown objects much larger than in training tends to cut them into pieces
        of about the training size, so the size measured at scale 1 alone cannot reveal
        large objects. The first (coarsest) probe whose objects (at least 5) measure at
        least 1 / :data:`AUTO_SCALE_MIN_RATIO` of the training diameter gives a first
        estimate: objects measured at a coarse scale are not fragments. Objects much
        smaller than in training come out a little too large, so a finer probe that lies
        at most half an octave above the estimated scale (where the objects measure at
        most sqrt(2) times the training size: no fragments yet) measures again and refines
        the estimate. Of the passes whose objects count, the one whose objects measure
        nearest the training size is kept (the pass at the estimated scale, unless a
        probe came nearer). In pixels processed, images at about the training size cost
        1.25 passes (probes at 1/2 and 1; more when the estimate is not 1), images of
        large objects less than one.
        """
        trained = self.package.object_diameter
        lo, hi = AUTO_SCALE_RANGE[self.package.ndim]
        min_side = max(int(np.max(self.package.min_shape)), 2 * MIN_IMAGE_SIDE)
        passes: dict[float, tuple[float | None, SegmentResult]] = {}

        def run_at(scale: float) -> None:
            passes[scale] = tuple(reversed(self._segment_at(img, scale, hint=False, **run)))

        def counts(measured: float | None) -> bool:
            return bool(trained and measured is not None and
                        measured >= trained / AUTO_SCALE_MIN_RATIO)

        probes = sorted(AUTO_SCALE_PROBES)
        valid: list[tuple[float, float]] = []  # (probe, measured) of the probes that count
        for i, probe in enumerate(probes):  # coarse first: stop at the first that counts
            if probe != 1.0 and (probe < lo or min(img.shape[1:]) * probe <
                                 max(min_side, 4 * (trained or math.inf))):
                continue
            run_at(probe)
            if counts(passes[probe][0]):
                valid.append((probe, passes[probe][0]))
                for finer in probes[i + 1:]:  # refine while a finer probe is near enough
                    last, size = valid[-1]
                    if finer > min(trained * last / size * math.sqrt(2), hi):
                        break
                    run_at(finer)
                    if not counts(passes[finer][0]):
                        break
                    valid.append((finer, passes[finer][0]))
                break
        notes: list[str] = []
        if not trained:
            chosen = 1.0
            notes.append("scale auto: the package records no training object size; used "
                         "scale 1")
        elif not valid:
            chosen = 1.0
            small = passes[1.0][0]  # the scale-1 probe always runs when none counts
            if small is None:
                notes.append("scale auto: too few objects to measure their size; used scale 1")
            else:  # objects found, but too small against the training size to count
                notes.append(f"scale auto: the objects at scale 1 measure {small:.0f} px "
                             f"{_ACROSS[self.package.object_size]}, under 1/{AUTO_SCALE_MIN_RATIO:g} of the training size "
                             f"({trained:.0f} px); used scale 1: if they are objects, give "
                             f"--scale (about {trained / small:.1f})")
        else:
            probe, measured = valid[-1]  # the finest probe that counts
            wanted = float(np.clip(trained * probe / measured, lo, hi))
            steps = round(AUTO_SCALE_STEPS * math.log2(wanted))
            chosen = float(np.clip(round(2.0 ** (steps / AUTO_SCALE_STEPS), 4), lo, hi))
            if chosen not in passes:
                run_at(chosen)
            kept = [s for s, (d, _) in passes.items() if counts(d)]
            if kept:  # the chosen pass unless a probe's objects came nearer the training size
                chosen = min(kept, key=lambda s: (abs(math.log(passes[s][0] / trained)),
                                                  s != chosen))
        measured, result = passes[chosen]
        confident = bool(trained and measured and abs(math.log(trained / measured)) <=
                         math.log(AUTO_SCALE_TOLERANCE))
        if trained and valid and not confident:
            found = (f"measure {measured:.0f} px {_ACROSS[self.package.object_size]}"
                     if measured is not None
                     else "are too few to measure")
            notes.append(f"scale auto: the objects at scale {chosen:g} {found}, the model was "
                         f"trained on {trained:.0f} px; check the result or give --scale")
        timings: dict[str, float] = {}
        for _, r in passes.values():
            for key, value in r.timings.items():
                timings[key] = timings.get(key, 0.0) + value
        info = {"confident": confident, "trained_diameter": trained,
                "diameter": None if measured is None else round(measured / chosen, 2),
                "passes": [[s, None if d is None else round(d, 2)]
                           for s, (d, _) in passes.items()]}
        return dataclasses.replace(result, timings=timings, notes=tuple(notes + list(result.notes)),
                                   auto_scale=info)

    def _segment_at(self, img: np.ndarray, scale: float, *, hint: bool, tile, fast, block,
                    keep_outputs, tile_progress, stage_progress, params,
                    tta: bool = False) -> tuple[SegmentResult, float | None]:
        """One pass at ``scale``: the result and the median object diameter (at ``scale``)."""
        pkg = self.package
        timings: dict[str, float] = {}
        in_shape = tuple(img.shape[1:])
        t = time.perf_counter()
        if scale != 1.0:
            img = _rescale(img, scale)
            _check_size(img.shape[1:], f"image scaled by {scale}")
        timings["rescale"] = time.perf_counter() - t

        t = time.perf_counter()
        x = self.preprocess(img)
        del img
        timings["preprocess"] = time.perf_counter() - t

        t = time.perf_counter()
        if stage_progress is not None:
            stage_progress("inference")
        model = self.params
        if tta:
            raw, numinst, second, model, n_tiles = self._infer_tta(x, tile, tile_progress)
        else:
            raw, n_tiles = self._infer(x, tile, tile_progress)
            numinst, second = self.params.split(raw[0]) if len(raw) == 1 else raw[:2]
        del x
        timings["inference"] = time.perf_counter() - t

        labels, assembly_device = self._assemble(numinst, second, params, timings, block=block,
                                                 stage_progress=stage_progress, model=model)
        measured = _median_diameter(labels, pkg.object_size)
        suggested, notes = (_scale_hint(measured, scale, pkg.object_diameter, _ACROSS[pkg.object_size]) if hint
                            else (None, []))

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
                             outputs, assembly_device=assembly_device), measured

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """``(C, [Z,] Y, X)`` -> the network input ``(1, C, [Z,] Y, X)``: the package's
        preprocessing."""
        return preprocess(image[None], ("batch", "channel") + self.package.space_axes,
                          self.package.preprocessing)

    def infer(self, x: np.ndarray, tile: Sequence[int] | None = None,
              progress: Progress = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Tiled inference on a preprocessed input ``(1, C, [Z,] Y, X)``: ``numinst``, the
        per-pixel output the head reads (features; codes or patches for format-1
        packages), and the number of tiles run."""
        raw, n_tiles = self._infer(x, tile, progress)
        numinst, values = self.params.split(raw[0]) if len(raw) == 1 else raw[:2]
        return numinst, values, n_tiles

    def assemble(self, numinst: np.ndarray, values: np.ndarray, params=None, *,
                 block: Sequence[int] | None = None,
                 stage_progress: Callable[[str], None] | None = None) -> np.ndarray:
        """Instances from ``numinst`` and the per-pixel output, as :meth:`segment` makes
        them: decoding by the package's head (and decoder), then the assembly with
        ``params`` (default: the package's), blockwise for large images or with
        ``block``."""
        params = params if params is not None else self.package.assembly_params()
        return self._assemble(numinst, values, params, {}, block=block,
                              stage_progress=stage_progress)[0]

    def _infer_tta(self, x: np.ndarray, tile, progress: Progress):
        """Test-time augmentation (:mod:`ppp_zoo.postprocess.tta`): the network on every
        mirror and rotation of ``x``, its outputs mapped back; numinst averaged, the
        features stacked for an :class:`~ppp_zoo.postprocess.tta.AveragedDecoder`. Returns
        the identity pass's raw outputs, numinst, the stacked features, the model
        parameters that decode them, and the tiles run."""
        from ..postprocess.tta import AveragedDecoder, apply, invert, transforms

        if self.params.output_channels is None:
            raise InputError("test-time augmentation needs a package whose output is numinst "
                             "and features (format 2); re-export the model")
        steps = transforms(self.params.assembly.patchshape)
        numinst, stack, n_tiles, first = None, [], 0, None
        for transform in steps:
            raw, n = self._infer(np.ascontiguousarray(apply(x, transform)), tile, progress)
            n_tiles += n
            first = raw if first is None else first
            ni, values = self.params.split(invert(raw[0], transform))
            numinst = ni.astype(np.float32) if numinst is None else numinst + ni
            stack.append(values)
        numinst = np.ascontiguousarray(numinst / len(steps))
        values = np.ascontiguousarray(np.concatenate(stack, axis=0))
        model = dataclasses.replace(self.params, decoder=AveragedDecoder(self.params.decoder,
                                                                         tuple(steps)))
        return first, numinst, values, model, n_tiles

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

    def _assemble(self, numinst, second, params, timings: dict, *, block,
                  stage_progress: Callable[[str], None] | None = None, model=None):
        """Decode features or codes into patches and assemble; blockwise (images with more
        than :data:`BLOCKWISE_PIXELS` pixels, or with ``block``; label images and
        overlapping masks alike) decoding happens
        per block, inside the assembly's time. The assembly follows the network: on the
        GPU (when numba can use it, else the CPU) when the engine runs there, else on the
        CPU."""
        from ..postprocess import assemble, assemble_blockwise

        blockwise = block is not None or math.prod(numinst.shape[1:]) > BLOCKWISE_PIXELS[
            len(params.patchshape)]

        device = "auto" if self.engine.device == "cuda" else "cpu"
        report = stage_progress or (lambda name: None)
        report("decode")
        t = time.perf_counter()
        model = dataclasses.replace(model or self.params, assembly=params)
        patches = model.patches(numinst, second, lazy=blockwise, candidates_only=True)
        timings["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        if blockwise:
            result = assemble_blockwise(
                numinst, patches, params, device=device, block_shape=block, return_result=True,
                progress=lambda done, total: report(f"assembly: block {done}/{total}"))
        else:
            result = assemble(numinst, patches, params, device=device, return_result=True,
                              progress=lambda name: report(f"assembly: {name}"))
        timings["assembly"] = time.perf_counter() - t
        return result.labels, result.device


def _scale_hint(measured: float | None, scale: float, trained: float | None,
                across: str = "across") -> tuple[float | None, list[str]]:
    """A ``scale`` suggestion when the objects found (``measured``: their median diameter
    at ``scale``) differ from the training size."""
    # fragments of a few pixels say more about a failed segmentation than about scale
    if measured is None or measured < MIN_DIAMETER or not trained:
        return None, []
    ratio = trained / measured
    if 1 / SCALE_HINT <= ratio <= SCALE_HINT:
        return None, []
    suggested = round(scale * ratio, 2)
    return suggested, [(f"objects measure about {measured / scale:.0f} px {across}, the model "
                       f"was trained on about {trained:.0f} px: try --scale {suggested}")]


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
                  tile: Sequence[int] | None = None, scale: float | str = 1.0,
                  fast: bool | None = None,
                  block: Sequence[int] | None = None, keep_outputs: bool = False,
                  tile_progress: Progress = None,
                  stage_progress: Callable[[str], None] | None = None, tta: bool = False,
                  **assembly_changes: Any) -> SegmentResult:
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
    scale : float or "auto"
        Resample the image by this factor before the model; labels come back on the
        input's grid. ``"auto"``: measure the objects and bring them to the training size
        (see :meth:`Segmenter.segment`; the choice is in ``SegmentResult.auto_scale``).
    fast : bool or None
        Assemble in fast (True) or exact (False) mode; None: as the package says.
    block : sequence of int, optional
        Assemble blockwise with this block size (default: blockwise above
        :data:`BLOCKWISE_PIXELS`, in blocks of
        :data:`ppp_zoo.postprocess.blocks.ASSEMBLY_BLOCK`).
    keep_outputs : bool
        Keep the raw network outputs in the result (with ``tta``: those of the image as
        it is).
    tile_progress : callable, optional
        Called with (tiles done, tiles total).
    stage_progress : callable, optional
        Called with the name of each stage as it starts ("inference", "decode",
        "assembly: <step>" or "assembly: block <done>/<total>"). An exception it raises
        ends the run there (how a GUI cancels).
    tta : bool
        Test-time augmentation: run the network on the 8 mirrors and rotations of a 2D
        image (4 for non-square patches; 16 in 3D with cubic patches), map the outputs back
        and average numinst and the decoded patches (:mod:`ppp_zoo.postprocess.tta`); about
        that many times the inference and decoding. The assembly is then exact unless
        ``fast`` says otherwise (the fast mode's grid moves under a mirror, the exact
        assembly has none).
    **assembly_changes
        Overrides of the package's assembly parameters.

    Returns
    -------
    SegmentResult
    """
    if isinstance(model, Segmenter):
        return model.segment(image, tile=tile, scale=scale, fast=fast, block=block,
                             keep_outputs=keep_outputs, tile_progress=tile_progress,
                             stage_progress=stage_progress, tta=tta,
                             **assembly_changes)
    with load_segmenter(model, engine, device) as seg:
        return seg.segment(image, tile=tile, scale=scale, fast=fast, block=block,
                           keep_outputs=keep_outputs, tile_progress=tile_progress,
                           stage_progress=stage_progress, tta=tta,
                           **assembly_changes)
