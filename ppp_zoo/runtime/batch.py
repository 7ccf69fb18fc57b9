"""Segment a batch of image files and write the results: the work of ``ppp-zoo segment``.

Per input: ``OUT/<stem>_labels.tif`` (uint16, or uint32 beyond 65535 instances; a mask
stack for models with overlapping instances), optionally ``OUT/<stem>_overlay.png``
(instance outlines over the image) and ``OUT/<stem>_outputs.npz`` (raw network outputs),
and one entry in ``OUT/segment_summary.json``. A bad input is reported and skipped; the
others are still processed. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, is_project_error
from ..io import (
    IMAGE_SUFFIXES,
    atomic_path,
    read_image,
    write_image,
    write_labels,
    write_npz,
)
from .segment import Segmenter, SegmentResult, load_segmenter

SUMMARY_NAME = "segment_summary.json"


@dataclasses.dataclass
class BatchReport:
    """What a batch did: one summary per segmented image, one message per failed input."""

    images: list[dict] = dataclasses.field(default_factory=list)
    errors: list[dict] = dataclasses.field(default_factory=list)
    model: str | None = None
    engine: str | None = None
    device: str | None = None
    # what ran the network (an ONNX Runtime execution provider, or torch), and why the
    # device differs from what --device auto wanted, if it does
    provider: str | None = None
    device_note: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"model": self.model, "engine": self.engine, "device": self.device,
                "provider": self.provider, "device_note": self.device_note,
                "images": self.images, "errors": self.errors}


@dataclasses.dataclass(frozen=True)
class BatchHooks:
    """Callbacks of :func:`segment_files` (all optional)."""

    on_error: Callable[[str, str], None] | None = None
    on_done: Callable[[str, dict], None] | None = None
    on_image: Callable[[int, int, str], None] | None = None
    on_tile: Callable[[int, int], None] | None = None


OUTPUT_SUFFIXES = ("_labels", "_overlay", "_rois")


def _is_output(path: Path) -> bool:
    """A file written by an earlier run (skipped when a folder is expanded)."""
    return path.stem.endswith(OUTPUT_SUFFIXES)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named by ``inputs`` (files, folders of images, glob patterns), and the inputs
    that name nothing, with a reason. Folders are not searched recursively, and their
    ``*_labels`` / ``*_overlay`` images (results of an earlier run) are left out.

    >>> expand_inputs(["no/such/file.tif"])
    ([], [('no/such/file.tif', 'no such file or folder')])
    """
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith(".") and not _is_output(p))
            if not found:
                missing.append((text, f"folder has no image files ({', '.join(IMAGE_SUFFIXES)})"))
            files += found
        elif path.exists():
            files.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                missing.append((text, "no file matches this pattern"))
            files += found
        else:
            missing.append((text, "no such file or folder"))
    unique = list(dict.fromkeys(files))
    return unique, missing


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and check that files can be written into it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".ppp-zoo-write-test-"):
            pass
    except OSError as err:
        raise UserError(f"{out_dir}: cannot write into the output folder "
                           f"({err.strerror or err})") from None


def overlay_image(image: np.ndarray, labels: np.ndarray, channels_last: bool = True) -> np.ndarray:
    """An RGB uint8 picture: the image (grey, 1-99.8 percentile contrast) with each instance
    outlined in its own colour; where overlapping instances (a mask stack) share pixels,
    those are tinted yellow under the outlines. 3D inputs show their middle z slice.

    >>> lab = np.zeros((20, 20), np.int32); lab[5:15, 5:15] = 1
    >>> rgb = overlay_image(np.ones((20, 20)), lab)
    >>> rgb.shape, rgb.dtype, bool((rgb[5, 5] != rgb[10, 10]).any())
    ((20, 20, 3), dtype('uint8'), True)
    """
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, dtype=np.float32)
    if labels.dtype == bool:  # mask stack -> outlines of every mask
        spatial = labels.shape[1:]
    else:
        spatial = labels.shape
    if img.ndim > len(spatial):  # channels: average them
        img = img.mean(axis=-1) if img.shape[-1] <= 4 and channels_last else img.mean(axis=0)
    if len(spatial) == 3:
        z = spatial[0] // 2
        img, labels = img[z], (labels[:, z] if labels.dtype == bool else labels[z])
    lo, hi = np.percentile(img, [1, 99.8]) if img.size else (0.0, 1.0)
    grey = np.clip((img - lo) / max(float(hi - lo), 1e-12), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if labels.dtype == bool:
        shared = labels.sum(axis=0) > 1
        rgb[shared] = (rgb[shared] * 0.45 + np.array(OVERLAP_TINT) * 0.55).astype(np.uint8)
        for i, mask in enumerate(labels, start=1):
            rgb[find_boundaries(mask, mode="inner")] = _colour(i)
    elif labels.max(initial=0) > 0:
        edge = find_boundaries(labels, mode="inner")
        ids = labels[edge]
        rgb[edge] = _colours(ids)
    return rgb


OVERLAP_TINT = (255, 230, 0)
"""Colour blended into the pixels that two or more instances share."""


def _colours(ids: np.ndarray) -> np.ndarray:
    """A bright, well-spread colour per id (golden-ratio hues)."""
    hue = (ids.astype(np.float64) * 0.618033988749895) % 1.0
    h6 = hue * 6
    c = np.stack([np.abs(h6 - 3) - 1, 2 - np.abs(h6 - 2), 2 - np.abs(h6 - 4)], axis=-1)
    return (np.clip(c, 0, 1) * 200 + 55).astype(np.uint8)


def _colour(i: int) -> np.ndarray:
    return _colours(np.array([i]))[0]


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


DEMO_ATTACHMENT = "example_image.tif"
"""The larger example image that packages of format 2 attach (their sample tensor is the
small test input)."""


def write_demo_input(model: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the model package's example image (the ``example_image.tif`` attachment, else
    its ``sample_tensor``) into ``out_dir``.

    Raises
    ------
    ValueError
        If the package ships no sample image.
    """
    import io

    import tifffile

    from .package import open_package

    package = open_package(model)
    attached = [a.get("source") for a in package.rdf.get("attachments") or []
                if isinstance(a, dict) and str(a.get("source", "")).endswith(DEMO_ATTACHMENT)]
    entry = package.rdf["inputs"][0].get("sample_tensor") or {}
    source = attached[0] if attached else (entry.get("source") if isinstance(entry, dict)
                                           else entry)
    if not source or not str(source).lower().endswith((".tif", ".tiff", ".npy")):
        raise UserError(f"{package.source}: the package has no sample image for --demo")
    data = package.read_bytes(str(source))
    try:
        image = (np.load(io.BytesIO(data), allow_pickle=False) if str(source).endswith(".npy")
                 else tifffile.imread(io.BytesIO(data)))
    except Exception as err:  # noqa: BLE001 - decoders raise many types
        raise UserError(f"{package.source}: cannot read its sample image ({err})") from None
    while image.ndim > package.ndim and image.shape[0] == 1:  # batch, single channel
        image = image[0]
    check_output_folder(Path(out_dir))
    return write_image(Path(out_dir) / "demo_input.tif", image)


def segment_files(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  model: str | os.PathLike, engine: str = "onnx", device: str = "auto",
                  tile: Sequence[int] | None = None, scale: float | str = 1.0,
                  fast: bool | None = None,
                  overlay: bool = False, save_outputs: bool = False, tta: bool = False,
                  rois: bool = False,
                  hooks: BatchHooks | None = None) -> BatchReport:
    """Segment every image named by ``inputs`` and write the results into ``out_dir``.

    Errors of one input (unreadable, wrong shape, NaN, too small) are recorded in the
    report and reported through ``hooks.on_error``; the batch goes on. A missing or
    corrupt model, or an output folder that cannot be written, raises
    ``ValueError`` (:class:`~ppp_zoo.runtime.PackageError` for the model) before any image
    is read.
    """
    hooks = hooks or BatchHooks()
    out_dir = Path(out_dir)
    report = BatchReport(model=str(model), engine=engine)
    files, missing = expand_inputs(inputs)
    check_output_folder(out_dir)
    with load_segmenter(model, engine, device) as seg:
        report.device = seg.engine.device
        report.provider, report.device_note = seg.engine.provider, seg.engine.device_note

        def fail(name: str, message: str) -> None:
            report.errors.append({"input": name, "error": message})
            if hooks.on_error is not None:
                hooks.on_error(name, message)

        for name, why in missing:
            fail(name, why)
        used: dict[str, Path] = {}
        for i, path in enumerate(files):
            if hooks.on_image is not None:
                hooks.on_image(i, len(files), str(path))
            stem = path.stem
            if stem in used:
                fail(str(path), f"same output name {stem}_labels.tif as {used[stem]}: "
                                "segment it into another folder")
                continue
            used[stem] = path
            try:
                entry = _segment_one(seg, path, out_dir, tile=tile, scale=scale, fast=fast,
                                     tta=tta,
                                     overlay=overlay, save_outputs=save_outputs, rois=rois,
                                     on_tile=hooks.on_tile)
            except Exception as err:
                if not (is_project_error(err) or isinstance(err, OSError)):
                    raise  # a bug: it stops the batch with its traceback
                message = str(err).strip().splitlines()[0] if str(err).strip() else \
                    type(err).__name__
                fail(str(path), message.removeprefix(f"{path}: "))
                continue
            except MemoryError:
                fail(str(path), "out of memory (try --fast, a smaller --tile or --scale)")
                continue
            report.images.append(entry)
            if hooks.on_done is not None:
                hooks.on_done(str(path), entry)
        if hooks.on_image is not None:
            hooks.on_image(len(files), len(files), "")
    _write_json(out_dir / SUMMARY_NAME, report.to_dict())
    return report


def _segment_one(seg: Segmenter, path: Path, out_dir: Path, *, tile, scale: float | str,
                 fast: bool | None, tta: bool,
                 overlay: bool, save_outputs: bool, on_tile,
                 rois: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    image = read_image(path)
    t_read = time.perf_counter() - t0
    result: SegmentResult = seg.segment(image, tile=tile, scale=scale, fast=fast, tta=tta,
                                        keep_outputs=save_outputs, tile_progress=on_tile)
    t = time.perf_counter()
    labels_path = out_dir / f"{path.stem}_labels.tif"
    written = [write_labels(labels_path, result.labels)]
    if rois:
        from ..rois import write_rois

        written.append(write_rois(out_dir / f"{path.stem}_rois.zip", result.labels,
                                  overlapping=result.labels.dtype == bool))
    if overlay:
        written.append(write_image(out_dir / f"{path.stem}_overlay.png",
                                   overlay_image(image, result.labels)))
    if save_outputs and result.outputs is not None:
        written.append(write_npz(out_dir / f"{path.stem}_outputs.npz",
                                 patchshape=np.asarray(seg.package.patchshape),
                                 **{k: np.asarray(v) for k, v in result.outputs.items()}))
    timings = {"read": round(t_read, 4), **result.summary()["timings"],
               "write": round(time.perf_counter() - t, 4)}
    return {"input": str(path), "labels": str(labels_path), **result.summary(),
            "timings": timings, "files": [str(p) for p in written]}
