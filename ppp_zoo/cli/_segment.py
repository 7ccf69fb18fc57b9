"""The commands that segment images and describe the installation: ``predict`` (with a
training checkpoint), ``segment`` (with a model package: image by image, or one large image
block by block on dask), ``models`` (the embedded model packages) and ``doctor`` (what this
installation runs on).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from ._common import (
    _BlockProgress,
    _interactive,
    _is_zarr,
    _status,
    reports_errors,
    rich_progress,
)


# --------------------------------------------------------------------------- predict
@reports_errors
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pt) written by 'ppp-zoo train'.")],
    images: Annotated[list[Path], typer.Argument(help="Images to segment.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for <stem>_labels.tif.")],
    fast: Annotated[Optional[bool], typer.Option("--fast/--exact", help="Assemble in fast mode (stride-2 voting) or exact mode (default: as the checkpoint says).", show_default=False)] = None,
    tile: Annotated[Optional[str], typer.Option(help="Run the network in tiles of this size (e.g. 512x512); large images are tiled anyway.")] = None,
):
    """Segment images with a trained checkpoint, as 'segment --scale 1' segments them with the
    package exported from it; writes OUTPUT/<stem>_labels.tif per image."""
    from ..io import read_image, write_labels
    from ..postprocess.params import parse_shape
    from ..predict import load_segmenter

    tile_shape = parse_shape(tile) if tile is not None else None
    segmenter = load_segmenter(checkpoint)  # the runtime of `segment`, run by PyTorch
    loaded = [(path, read_image(path)) for path in images]
    output.mkdir(parents=True, exist_ok=True)
    for path, image in loaded:
        target = output / f"{path.stem}_labels.tif"
        labels = segmenter.segment(image, fast=fast, tile=tile_shape).labels
        write_labels(target, labels)
        _status(f"wrote {target}: {labels.shape[0] if labels.dtype == bool else int(labels.max(initial=0))} instances")


# --------------------------------------------------------------------------- segment
@reports_errors
def segment(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Images (tif, png, npy), folders of images, or glob patterns.", show_default=False)] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path("segmented"),
    model: Annotated[Optional[str], typer.Option(help="Model package (.zip or folder) or the name of an embedded model (default: the embedded nuclei model).")] = None,
    engine: Annotated[str, typer.Option(help="onnx (ONNX Runtime) or torchscript (needs PyTorch).")] = "onnx",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    tile: Annotated[Optional[str], typer.Option(help="Tile size for inference, e.g. 512x512 (rounded to a size the model accepts).")] = None,
    scale: Annotated[str, typer.Option(help="'auto': measure the objects and resample so that they match the training size (one extra pass when they differ); or a factor (objects larger than in training: < 1). Labels come back on the input grid.")] = "auto",
    overlay: Annotated[bool, typer.Option(help="Also write <stem>_overlay.png: instance outlines over the image.")] = False,
    save_outputs: Annotated[bool, typer.Option(help="Also write <stem>_outputs.npz: the raw network outputs.")] = False,
    rois: Annotated[bool, typer.Option("--rois", help="Also write <stem>_rois.zip: one ImageJ polygon ROI per instance, named by its id (Fiji's ROI Manager opens it; overlapping instances overlap there too).")] = False,
    fast: Annotated[Optional[bool], typer.Option("--fast/--exact", help="Assemble in fast mode (stride-2 voting) or exact mode (default: as the model package says).", show_default=False)] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Test-time augmentation: average the network over the 8 mirrors and rotations of each image (the same answer in every orientation; assembled in exact mode unless --fast is given; about 4x the time of a small image).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON summary to stdout.")] = False,
    demo: Annotated[bool, typer.Option(help="Segment the model's own sample image (written to OUTPUT/demo_input.tif).")] = False,
    block: Annotated[Optional[str], typer.Option(help="Segment in blocks of this size on dask.distributed, e.g. 1024x1024 (needs the [dask] extra).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Blocks on a local cluster of this many worker processes.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Blocks on the dask scheduler at this address (e.g. tcp://host:8786).")] = None,
    level: Annotated[int, typer.Option(min=0, help="Resolution level of an OME-Zarr input.")] = 0,
    name: Annotated[str, typer.Option(help="Name of the OME-Zarr label image (labels/<name>).")] = "nuclei",
):
    """Segment images with a model package; writes OUTPUT/<stem>_labels.tif per image.

    A zarr input, or --block/--workers/--scheduler, segments one large image block by block
    on dask.distributed: -o OUT.zarr writes the OME-Zarr label image OUT.zarr/labels/NAME
    (the input's own path: inside it), -o OUT.tif a TIFF."""
    from ..postprocess.params import parse_shape
    from ..runtime.batch import segment_files, write_demo_input
    from ..runtime.models import resolve_model

    tile_shape = parse_shape(tile) if tile is not None else None
    scale_value = _parse_scale(scale)
    model_path = resolve_model(model)
    inputs = list(inputs or [])
    if block or workers or scheduler or any(_is_zarr(i) for i in inputs):
        if scale_value not in ("auto", 1.0):
            raise UserError("--scale is not available block by block: resample the image "
                            "first (blocks run at scale 1)")
        if tta:
            raise UserError("--tta is not available block by block")
        return _segment_blocks(inputs, output, model_path, parse_shape(block) if block else None,
                               workers=workers, scheduler=scheduler, level=level, name=name,
                               engine=engine, device=device, fast=fast, tile=tile_shape,
                               json_out=json_out)
    if demo:
        inputs.append(str(write_demo_input(model_path, output)))
    if not inputs:
        raise UserError("give INPUT images, folders or patterns (or --demo)")
    with _SegmentProgress(enabled=_interactive()) as progress:
        report = segment_files(
            inputs, output, model=model_path, engine=engine, device=device,
            tile=tile_shape, scale=scale_value, fast=fast, overlay=overlay,
            save_outputs=save_outputs, tta=tta, rois=rois,
            hooks=progress.hooks(_segment_error, _segment_done))
    if report.device_note:
        _status(f"note: {report.device_note}")
    _status(f"device: {report.device} ({report.engine}, {report.provider})")
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
    if not report.ok:
        raise typer.Exit(code=1)


def _parse_scale(text: str) -> float | str:
    """``--scale``: 'auto' or a factor in [0.01, 100]."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--scale must be 'auto' or a number, got {text!r}") from None
    if not 0.01 <= value <= 100 or not math.isfinite(value):
        raise UserError(f"--scale must lie in [0.01, 100], got {text}")
    return value


def _segment_blocks(inputs: list[str], output: Path, model: Path, block, *, workers, scheduler,
                    level, name, engine, device, fast, tile, json_out) -> None:
    """One large image, block by block on dask.distributed."""
    from ..runtime.distributed import segment_distributed

    if len(inputs) != 1:
        raise UserError(f"block-wise segmentation takes one image, got {len(inputs)}")
    if workers and scheduler:
        raise UserError("give --workers or --scheduler, not both")
    source = Path(inputs[0].rstrip("/"))
    if output.suffix.lower() not in (".zarr", ".tif", ".tiff"):
        output = output / f"{source.name.split('.')[0]}_labels.ome.zarr"
    with _BlockProgress(enabled=_interactive()) as progress:
        result = segment_distributed(source, output, model=model, level=level, block=block,
                                     name=name, engine=engine,
                                     device="cpu" if device == "auto" else device, fast=fast,
                                     tile=tile, workers=workers, scheduler=scheduler,
                                     progress=progress)
    where = f"{output}/labels/{name}" if output.suffix.lower() == ".zarr" else str(output)
    if len(result.planes) > 1:  # overlapping instances: label images that share no pixel
        where = f"{output}/labels/{{{','.join(result.planes)}}}"
    t = result.timings
    _status(f"wrote {where}: {result.n_instances} instances ({result.n_blocks} blocks of "
            f"{'x'.join(map(str, result.block))}, {result.workers} workers, "
            f"{t['total']:.1f} s; merge {t['merge']:.1f} s)")
    if json_out:
        typer.echo(json.dumps(result.summary()))


def _segment_error(name: str, message: str) -> list[str]:
    return [f"error: {name}: {message}"]


def _segment_done(name: str, entry: dict) -> list[str]:
    n = entry["n_instances"]
    constant = entry.get("constant_image", False)
    why = " (constant image)" if constant else ""
    seconds = sum(entry["timings"].values())
    lines = [f"wrote {entry['labels']}: {n} instance{'' if n == 1 else 's'}{why} ({seconds:.2f} s)"]
    auto = entry.get("auto_scale")
    if auto and auto.get("confident"):
        lines.append(f"scale auto: {entry['scale']:g} (objects about {auto['diameter']:.0f} px "
                     f"across, trained on {auto['trained_diameter']:.0f} px)")
    notes = entry["notes"][1:] if constant else entry["notes"]  # the first says "constant"
    return lines + [f"note: {name}: {note}" for note in notes]


class _SegmentProgress:
    """Progress bars over images and tiles (rich, on a terminal only)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None

    def __enter__(self):
        if self.enabled:
            self._progress = rich_progress("{task.description}")
            self._progress.start()
            self._images = self._progress.add_task("images", total=None)
            self._tiles = self._progress.add_task("tiles", total=None)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def _emit(self, lines: list[str]) -> None:
        for line in lines:
            if self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False)
            else:
                typer.echo(line, err=True)

    def hooks(self, on_error, on_done):
        """Hooks that print the lines of ``on_error`` / ``on_done`` and drive the bars."""
        from ..runtime.batch import BatchHooks

        def errors(*a):
            self._emit(on_error(*a))

        def done(*a):
            self._emit(on_done(*a))

        if self._progress is None:
            return BatchHooks(on_error=errors, on_done=done)
        progress = self._progress

        def on_image(done: int, total: int, name: str) -> None:
            progress.update(self._images, completed=done, total=total,
                            description=f"images {Path(name).name}" if name else "images")
            progress.update(self._tiles, completed=0, total=None)

        def on_tile(done: int, total: int) -> None:
            progress.update(self._tiles, completed=done, total=total)

        return BatchHooks(on_error=errors, on_done=done, on_image=on_image, on_tile=on_tile)


# --------------------------------------------------------------------------- models / doctor
@reports_errors
def models(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """List the model packages shipped with ppp-zoo, with their metrics."""
    from ..runtime.models import embedded_models

    entries = embedded_models()
    if json_out:
        typer.echo(json.dumps({"models": entries}))
        return
    if not entries:
        raise UserError("no embedded model in this installation (ppp_zoo/models/index.json "
                        "is missing)")
    for i, entry in enumerate(entries):
        default = "  (default)" if i == 0 else ""
        typer.echo(f"{entry['name']}{default}: {entry.get('description', '')}")
        typer.echo(f"  file: ppp_zoo/models/{entry['file']}")
        for data, values in (entry.get("metrics") or {}).items():
            if isinstance(values, dict):
                text = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in values.items())
            else:
                text = str(values)
            typer.echo(f"  {data}: {text}")


@reports_errors
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """What this installation runs on (for bug reports): ONNX Runtime build and providers,
    GPU, numba, torch, python."""
    from ..runtime.doctor import collect_report

    report = collect_report()
    typer.echo(json.dumps(report.to_dict()) if json_out else report.format())
