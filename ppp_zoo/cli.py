"""The ``ppp-zoo`` command line: a thin layer that parses, calls one function, reports.

Every failure the user can cause (a missing or unreadable file, a wrong shape, bad
parameter values) ends with one ``error: ...`` line on stderr and exit code 1, and no
output file is written.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from .errors import SetupError, UserError, describe, is_project_error

app = typer.Typer(
    name="ppp-zoo",
    help="PatchPerPix instance segmentation: targets, instance assembly, evaluation, data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Sample and synthetic data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


INTERNAL_ERROR_EXIT = 70
"""Exit code of a bug (EX_SOFTWARE); every error the user can fix exits with 1."""


def _report_bug(err: BaseException) -> None:
    """One line for the user, the traceback in a file to attach to a bug report (and on
    stderr with ``--traceback``)."""
    import tempfile
    import traceback

    from . import __version__

    text = "".join(traceback.format_exception(err))
    with tempfile.NamedTemporaryFile("w", prefix="ppp-zoo-error-", suffix=".txt",
                                     delete=False) as f:
        f.write(f"ppp-zoo {__version__}\n{' '.join(sys.argv)}\n\n{text}")
    if _show_traceback():
        typer.echo(text, err=True)
    typer.echo(f"internal error ({describe(err)}); this is a bug in ppp-zoo, please report "
               f"it with the traceback saved in {f.name}", err=True)
    raise typer.Exit(code=INTERNAL_ERROR_EXIT)


_OPTIONS = {"traceback": False}
"""The options given before the command (set anew by every invocation)."""


def _show_traceback() -> bool:
    return _OPTIONS["traceback"]


@app.callback()
def _options(
    traceback: Annotated[bool, typer.Option("--traceback", help="Print the full traceback of any error (also of the one-line ones).")] = False,
) -> None:
    """PatchPerPix instance segmentation: targets, instance assembly, evaluation, data."""
    _OPTIONS["traceback"] = traceback


def reports_errors(func):
    """Turn the project's own errors (bad input, a bad package, a missing library or GPU)
    and file-system errors into one ``error:`` line and exit code 1; any other exception is
    a bug: its traceback goes to a file and the exit code is 70."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except MemoryError:
            _fail("out of memory (try --fast, or a smaller image)")
        except Exception as err:  # noqa: BLE001 - sorted below: the user's, or a bug
            if is_project_error(err) or isinstance(err, OSError):
                if _show_traceback():
                    import traceback

                    typer.echo("".join(traceback.format_exception(err)), err=True)
                if is_project_error(err) or isinstance(err, FileNotFoundError):
                    msg = str(err).strip().splitlines()[0] if str(err).strip() else \
                        type(err).__name__
                    _fail(msg)
                _fail(f"{err.filename or ''}: {err.strerror or err}".lstrip(": "))
            _report_bug(err)

    return wrapper


def _status(message: str) -> None:
    typer.echo(message, err=True)


# --------------------------------------------------------------------------- targets
@app.command()
@reports_errors
def targets(
    labels: Annotated[Path, typer.Argument(help="Label image, or with --overlapping an (N, Y, X) mask stack.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .npz with numinst and patches.")],
    patchshape: Annotated[str, typer.Option(help="Patch shape, e.g. 25x25 or 9x9x9.")] = "25x25",
    overlapping: Annotated[bool, typer.Option(help="LABELS is a stack of instance masks.")] = False,
):
    """Write the ideal network output (GT numinst and patches) for a label image."""
    from .data.targets import instance_targets
    from .io import read_image, write_npz
    from .postprocess.params import parse_shape

    shape = parse_shape(patchshape)
    lab = read_image(labels)
    numinst, patches = instance_targets(lab, shape, overlapping=overlapping)
    write_npz(output, numinst=numinst, patches=patches, patchshape=np.asarray(shape))
    _status(f"wrote {output}: numinst {numinst.shape}, patches {patches.shape}")


# --------------------------------------------------------------------------- postprocess
def _load_outputs(path: Path, patchshape: Optional[str]):
    from .io import read_npz
    from .postprocess.params import parse_shape

    arrays = read_npz(path)
    if "patches" not in arrays:
        raise UserError(
            f"{path}: no 'patches' array (found: {', '.join(sorted(arrays)) or 'nothing'}); "
            "expected keys 'patches' and optionally 'numinst', 'patchshape'"
        )
    stored = tuple(int(s) for s in arrays["patchshape"]) if "patchshape" in arrays else None
    if patchshape is not None:
        shape = parse_shape(patchshape)
        if stored is not None and shape != stored:
            raise UserError(
                f"--patchshape {'x'.join(map(str, shape))} does not match the patchshape "
                f"{'x'.join(map(str, stored))} stored in {path}"
            )
    elif stored is not None:
        shape = stored
    else:
        raise UserError(f"{path} holds no 'patchshape': pass --patchshape (e.g. 25x25)")
    return arrays.get("numinst"), arrays["patches"], shape


@app.command()
@reports_errors
def postprocess(
    outputs: Annotated[Path, typer.Argument(help=".npz with 'patches' (P, [Z,] Y, X) and 'numinst' (3, [Z,] Y, X); with --model also the model's raw output as deepImageJ (.tif) or ilastik (.h5) saved it, or .npy.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Label image to write (.tif, .png, .npy).")],
    patchshape: Annotated[Optional[str], typer.Option(help="Patch shape (default: the one stored in the .npz).")] = None,
    patch_threshold: Annotated[Optional[float], typer.Option(help="TH (default 0.9).")] = None,
    fc_threshold: Annotated[Optional[float], typer.Option(help="Foreground-cover threshold (default 0.5).")] = None,
    partition: Annotated[Optional[str], typer.Option(help="cc (connected components) or mws (mutex watershed).")] = None,
    min_size: Annotated[Optional[int], typer.Option(help="Remove instances smaller than this.")] = None,
    fast: Annotated[Optional[bool], typer.Option("--fast/--exact", help="Fast mode votes and ranks with centres on a stride grid only (default: as the model package says; exact without one).")] = None,
    overlapping: Annotated[Optional[bool], typer.Option("--overlapping/--no-overlapping", help="Write an (N, [Z,] Y, X) stack of instance masks (default: as the model package says; no without one).")] = None,
    block: Annotated[Optional[str], typer.Option(help="Assemble in blocks of this core size (e.g. 256x256) and stitch: bounded memory for large images.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary to stdout.")] = False,
    model: Annotated[Optional[Path], typer.Option("--model", help="Exported model package (.zip or folder): every parameter, and the decoding of its output, come from it; the options above override them.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Assemble a zarr OUTPUTS array block by block on a local dask cluster of this many processes (needs the [dask] extra).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="... or on the dask scheduler at this address.")] = None,
    device: Annotated[str, typer.Option(help="Where the assembly kernels run: auto (a CUDA GPU when numba finds one it can use, else the CPU), cpu or cuda (numba's CUDA target). The labels are the same.")] = "auto",
):
    """Assemble instances from PatchPerPix outputs (numinst + patches), or from a model's raw
    output with --model."""
    import time

    from .io import write_labels
    from .postprocess import AssemblyParams, assemble, assemble_blockwise, parse_shape
    from .postprocess.assembly import resolve_device

    try:
        resolve_device(device)
    except RuntimeError as err:  # cuda without a usable GPU
        raise SetupError(str(err)) from None
    changes = dict(patch_threshold=patch_threshold, fc_threshold=fc_threshold,
                   partition=partition, min_size=min_size, fast=fast, overlapping=overlapping)
    if _is_zarr(str(outputs)) or workers or scheduler:
        return _postprocess_blocks(outputs, output, model, patchshape, changes, block,
                                   workers=workers, scheduler=scheduler, json_out=json_out,
                                   device=device)
    if model is not None:
        numinst, patches, params = _load_outputs_for_model(outputs, model, patchshape, changes,
                                                           lazy=block is not None)
    else:
        numinst, patches, shape = _load_outputs(outputs, patchshape)
        params = AssemblyParams(patchshape=shape).replace(**changes)
    if block is not None:
        if params.overlapping:
            raise UserError("--block writes label images: it cannot be combined with --overlapping")
        t0 = time.perf_counter()
        labels = assemble_blockwise(numinst, patches, params, block_shape=parse_shape(block),
                                    progress=_block_progress if _interactive() else None,
                                    device=device)
        summary = {"n_instances": int(labels.max(initial=0)),
                   "timings": {"blockwise": round(time.perf_counter() - t0, 4)}}
        empty = not (labels > 0).any() and not _has_foreground(numinst, patches, params)
    else:
        result = assemble(numinst, patches, params, return_result=True,
                          progress=_step_progress if _interactive() else None, device=device)
        labels, summary, empty = result.labels, result.summary(), result.n_candidates == 0
    if empty:
        raise UserError(f"{outputs}: no foreground pixel (numinst/patch centre below the "
                        "thresholds everywhere): nothing to assemble")
    write_labels(output, labels)
    summary = {"output": str(output), **summary}
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        _status(f"wrote {output}: {summary['n_instances']} instances "
                f"({sum(summary['timings'].values()):.2f} s)")


def _postprocess_blocks(outputs: Path, output: Path, model: Optional[Path],
                        patchshape: Optional[str], changes: dict, block: Optional[str], *,
                        workers, scheduler, json_out: bool, device: str = "auto") -> None:
    """Raw outputs stored in zarr, assembled block by block on dask.distributed."""
    import dataclasses

    from .io import open_image_source
    from .postprocess import AssemblyParams, load_model_params, parse_shape
    from .runtime.distributed import assemble_distributed

    if workers and scheduler:
        raise UserError("give --workers or --scheduler, not both")
    if model is not None:
        params = load_model_params(model)
        assembly = params.assembly.replace(**changes)
        params = dataclasses.replace(params, assembly=assembly)
        channels = params.n_output_channels
    elif patchshape is not None:
        params = assembly = AssemblyParams(patchshape=parse_shape(patchshape)).replace(**changes)
        channels = 3 + int(np.prod(assembly.patchshape))
    else:
        raise UserError(f"{outputs}: pass --model (or --patchshape for numinst and patches "
                        "stacked on the first axis)")
    source = open_image_source(outputs)
    ndim = assembly.ndim
    if "c" not in source.axes and len(source.shape) == ndim + 1:
        # a plain array without axis metadata: the model's output, channels first
        source = dataclasses.replace(source, axes="c" + "zyx"[3 - ndim:])
    if source.channels != channels or len(source.space_shape) != ndim:
        raise UserError(f"{outputs}: shape {tuple(source.shape)} (axes {source.axes}), "
                        f"expected ({channels}, {'Z, ' if ndim == 3 else ''}Y, X): the "
                        "output of this model, channels first")
    if output.suffix.lower() not in (".zarr", ".tif", ".tiff"):
        raise UserError(f"{output}: block-wise assembly writes .zarr (OME-Zarr labels) or .tif")
    with _BlockProgress(enabled=_interactive()) as progress:
        result = assemble_distributed(source, output, params,
                                      block=parse_shape(block) if block else None,
                                      workers=workers, scheduler=scheduler, progress=progress,
                                      device=device)
    if json_out:
        typer.echo(json.dumps(result.summary()))
    else:
        _status(f"wrote {output}: {result.n_instances} instances ({result.n_blocks} blocks, "
                f"{result.workers} workers)")


def _load_outputs_for_model(path: Path, model: Path, patchshape: Optional[str],
                            changes: dict, lazy: bool):
    """numinst, patches (decoded from features or codes) and the package's parameters with
    ``changes`` applied."""
    import dataclasses

    from .io import read_model_output
    from .postprocess import load_model_params, parse_shape

    package = load_model_params(model)
    params = package.assembly.replace(**changes)
    package = dataclasses.replace(package, assembly=params)
    if patchshape is not None and parse_shape(patchshape) != params.patchshape:
        raise UserError(f"--patchshape {patchshape} differs from the model's patchshape "
                        f"{'x'.join(map(str, params.patchshape))}")
    tensor = package.output_ids[0]
    arrays = read_model_output(path, channels=package.n_output_channels, ndim=params.ndim,
                               tensor_id=tensor)
    if package.format >= 2:
        if tensor not in arrays:
            raise UserError(f"{path}: no '{tensor}' array (found: "
                            f"{', '.join(sorted(arrays)) or 'nothing'}); {model} outputs one "
                            f"tensor '{tensor}' of {package.n_output_channels} channels")
        numinst, features = package.split(arrays[tensor])
        return numinst, package.patches(numinst, features, lazy=lazy), params
    # format 1: numinst and patches or codes, as separate arrays
    numinst = arrays.get("numinst")
    if "patches" in arrays:
        return numinst, arrays["patches"], params
    if "codes" not in arrays:
        raise UserError(f"{path}: no 'patches' or 'codes' array (found: "
                        f"{', '.join(sorted(arrays)) or 'nothing'})")
    if package.decoder is None:
        raise UserError(f"{path} holds 'codes' but {model} is a ppp model without a decoder")
    if numinst is None:
        raise UserError(f"{path}: decoding 'codes' needs the 'numinst' array too")
    return numinst, package.patches(numinst, arrays["codes"], lazy=lazy), params


def _interactive() -> bool:
    return sys.stderr.isatty()


def _step_progress(step: str) -> None:
    _status(f"  {step} ...")


def _block_progress(done: int, total: int) -> None:
    _status(f"  block {done}/{total}")


def _has_foreground(numinst, patches, params) -> bool:
    from .postprocess.assembly import candidate_mask, foreground_classes

    return bool(candidate_mask(foreground_classes(numinst, patches, params), params).any())


# --------------------------------------------------------------------------- evaluate
@app.command()
@reports_errors
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted labels (or mask stack with --overlapping).")],
    gt: Annotated[Path, typer.Argument(help="Ground-truth labels (or mask stack).")],
    overlapping: Annotated[bool, typer.Option(help="Inputs are (N, Y, X) instance-mask stacks.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Score a prediction against ground truth: AP at IoU 0.1..0.95 and avAP."""
    from .evaluate import evaluate_image
    from .io import read_image

    result = evaluate_image(read_image(pred), read_image(gt), overlapping=overlapping)
    d = result.to_dict()
    if json_out:
        typer.echo(json.dumps(d))
        return
    typer.echo(f"instances: predicted {d['n_pred']}, ground truth {d['n_gt']}")
    for key in ("0.5", "0.75", "0.9"):
        typer.echo(f"AP@{key:<5} {d['ap'][key]:.4f}")
    typer.echo(f"avAP (0.5:0.9)  {d['avAP']:.4f}")
    typer.echo(f"avAP (0.5:0.95) {d['avAP_50_95']:.4f}")


# --------------------------------------------------------------------------- data
@data_app.command("sample")
@reports_errors
def data_sample(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write into.")],
):
    """Write the real DSB 2018 sample (image, labels, and its left/right halves)."""
    from .data.sample import write_sample

    paths = write_sample(output)
    _status(f"wrote {len(paths)} files to {output}")


@data_app.command("synth-worms")
@reports_errors
def data_synth_worms(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write into.")],
    n_images: Annotated[int, typer.Option(min=1, help="Number of images.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
):
    """Write synthetic overlapping worms: images/ and masks/ (one mask per worm)."""
    from .data.synth import write_synth_worms

    write_synth_worms(output, n_images=n_images, seed=seed)
    _status(f"wrote {n_images} worm images to {output}")


@data_app.command("synth-nuclei")
@reports_errors
def data_synth_nuclei(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write into.")],
    n_images: Annotated[int, typer.Option(min=1, help="Number of images.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    size: Annotated[str, typer.Option(help="Image size, e.g. 256x256 or 32x128x128.")] = "256x256",
):
    """Write synthetic touching nuclei: images/ and masks/ (label images)."""
    from .data.synth import write_synth_nuclei
    from .postprocess.params import parse_shape

    write_synth_nuclei(output, n_images=n_images, seed=seed, shape=parse_shape(size))
    _status(f"wrote {n_images} nuclei images to {output}")


# --------------------------------------------------------------------------- train / predict
@app.command()
@reports_errors
def train(
    config: Annotated[Optional[Path], typer.Argument(help="TOML configuration file (with --preset: overrides of the preset).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Shipped preset instead of a file, e.g. nuclei2d-cpu.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: runs/<config or preset name>).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop after this many minutes (overrides the config).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
):
    """Train a PatchPerPix network; writes last.pt, best.pt, metrics.json and curve.png."""
    from .config import load_config, load_preset
    from .train import train as run_training

    if config is None and preset is None:
        raise UserError("give a CONFIG file, --preset NAME, or both (the file then overrides "
                        "the preset)")
    cfg = load_config(config, preset=preset) if config is not None else load_preset(preset)
    out = out or Path("runs") / (config.stem if config is not None else preset)
    result = run_training(cfg, out, max_minutes=max_minutes, device=device, resume=resume,
                          progress=sys.stderr.isatty())
    best = "n/a" if result.best_avAP is None else f"{result.best_avAP:.4f}"
    _status(f"wrote {out}: {result.iterations} iterations, final loss {result.final_loss:.4f}, "
            f"best val avAP {best}")
    for note in result.notes:
        _status(f"note: {note}")


@app.command()
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
    from .io import read_image, write_labels
    from .postprocess.params import parse_shape
    from .predict import load_segmenter

    tile_shape = parse_shape(tile) if tile is not None else None
    segmenter = load_segmenter(checkpoint)  # the runtime of `segment`, run by PyTorch
    loaded = [(path, read_image(path)) for path in images]
    output.mkdir(parents=True, exist_ok=True)
    for path, image in loaded:
        target = output / f"{path.stem}_labels.tif"
        labels = segmenter.segment(image, fast=fast, tile=tile_shape).labels
        write_labels(target, labels)
        _status(f"wrote {target}: {labels.shape[0] if labels.dtype == bool else int(labels.max(initial=0))} instances")


# --------------------------------------------------------------------------- segment / models
@app.command()
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
    fast: Annotated[Optional[bool], typer.Option("--fast/--exact", help="Assemble in fast mode (stride-2 voting) or exact mode (default: as the model package says).", show_default=False)] = None,
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
    from .postprocess.params import parse_shape
    from .runtime.batch import segment_files, write_demo_input
    from .runtime.models import resolve_model

    tile_shape = parse_shape(tile) if tile is not None else None
    scale_value = _parse_scale(scale)
    model_path = resolve_model(model)
    inputs = list(inputs or [])
    if block or workers or scheduler or any(_is_zarr(i) for i in inputs):
        if scale_value not in ("auto", 1.0):
            raise UserError("--scale is not available block by block: resample the image "
                            "first (blocks run at scale 1)")
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
            save_outputs=save_outputs, hooks=progress.hooks(_segment_error, _segment_done))
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


def _is_zarr(path: str) -> bool:
    from .io import is_zarr

    return is_zarr(path)


def _segment_blocks(inputs: list[str], output: Path, model: Path, block, *, workers, scheduler,
                    level, name, engine, device, fast, tile, json_out) -> None:
    """One large image, block by block on dask.distributed."""
    from .runtime.distributed import segment_distributed

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
    t = result.timings
    _status(f"wrote {where}: {result.n_instances} instances ({result.n_blocks} blocks of "
            f"{'x'.join(map(str, result.block))}, {result.workers} workers, "
            f"{t['total']:.1f} s; merge {t['merge']:.1f} s)")
    if json_out:
        typer.echo(json.dumps(result.summary()))


class _BlockProgress:
    """A progress bar over blocks (rich, on a terminal; else a line per tenth)."""

    def __init__(self, enabled: bool):
        self.enabled, self._progress, self._shown = enabled, None, -1

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(TextColumn("blocks"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True),
                                      transient=True)
            self._progress.start()
            self._task = self._progress.add_task("blocks", total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)
        elif done * 10 // total > self._shown:
            self._shown = done * 10 // total
            _status(f"  blocks {done}/{total}")

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()


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
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=True)
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
        from .runtime.batch import BatchHooks

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


@app.command()
@reports_errors
def models(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """List the model packages shipped with ppp-zoo, with their metrics."""
    from .runtime.models import embedded_models

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


@app.command()
@reports_errors
def doctor(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """What this installation runs on (for bug reports): ONNX Runtime build and providers,
    GPU, numba, torch, python."""
    from .runtime.doctor import collect_report

    report = collect_report()
    typer.echo(json.dumps(report.to_dict()) if json_out else report.format())


# --------------------------------------------------------------------------- export / validate
@app.command("export")
@reports_errors
def export_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint (.pt) written by 'ppp-zoo train'.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model package to write (.zip, or a folder with --folder).")],
    name: Annotated[Optional[str], typer.Option(help="Model name (default: from variant, dimensions and data).")] = None,
    nickname: Annotated[Optional[str], typer.Option(help="Short id that deepImageJ lists the model by: lowercase letters, digits, - and _ (default: from the name).")] = None,
    author: Annotated[Optional[list[str]], typer.Option("--author", help="Author name; repeat for several.")] = None,
    formats: Annotated[str, typer.Option(help="Weight formats, comma-separated.")] = "torchscript,onnx",
    folder: Annotated[bool, typer.Option(help="Write an unpacked folder instead of a zip.")] = False,
    metrics: Annotated[Optional[Path], typer.Option(help="JSON file of measured test metrics to record, e.g. {\"dsb_test_half\": {\"avAP\": 0.7}}.")] = None,
    check_readers: Annotated[bool, typer.Option("--check-readers", help="Also load the package with the bioimage.io readers that ilastik 1.4.1 and 1.4.2 ship (environments made once, on first use).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary to stdout.")] = False,
):
    """Export a checkpoint as a bioimage.io model package (TorchScript + ONNX), validated.

    The package is written for the readers that ilastik and deepImageJ ship (format 0.5.10
    forms), and config.ppp_zoo.checked_with records what it was checked with."""
    from .export import export_model

    recorded = _read_metrics(metrics) if metrics is not None else None
    result = export_model(checkpoint, output, name=name, nickname=nickname, authors=author,
                          formats=formats,
                          folder=folder, metrics=recorded, check_readers=check_readers,
                          progress=_step_progress if _interactive() or check_readers else None)
    if json_out:
        typer.echo(json.dumps(result.to_dict()))
        return
    typer.echo(f"wrote {result.path}: {result.size_mb:.2f} MB, exported and validated in "
               f"{result.seconds:.1f} s")
    typer.echo(result.table())


def _read_metrics(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: metrics must be a JSON object")
    return value


@app.command()
@reports_errors
def validate(
    model: Annotated[Path, typer.Argument(help="Model package (.zip, folder or rdf.yaml).")],
    for_tools: Annotated[Optional[str], typer.Option("--for", help="Check the rules of these tools instead: deepimagej, ilastik, bioimageio (comma-separated).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
):
    """Run bioimageio.core's model test for every weight format, or with --for the rules that
    deepImageJ, ilastik and the bioimage.io collection apply; exit 1 unless all pass.

    --for ilastik also loads the package with the bioimage.io readers that ilastik 1.4.1 and
    1.4.2 ship (bioimageio.spec 0.5.4.1, 0.5.9.1 with core 0.10.2's test_model), each in an
    environment made on first use; --for deepimagej checks how JDLL reads every field."""
    if for_tools is not None:
        from .runtime.compat import check_package, format_rules

        rules = check_package(model, for_tools, say=_status)
        typer.echo(json.dumps([r.to_dict() for r in rules]) if json_out else format_rules(rules))
        failed = sorted({r.tool for r in rules if r.checked and not r.passed})
        unchecked = [r.rule for r in rules if not r.checked]
        if failed:
            _status(f"would fail in: {', '.join(failed)}")
        if unchecked:
            _status(f"not checked: {'; '.join(unchecked)} (see the detail column)")
        if failed or unchecked:
            raise typer.Exit(code=1)
        return
    from .export.validation import format_table, validate_package

    rows = validate_package(model)
    typer.echo(json.dumps([r.to_dict() for r in rows]) if json_out else format_table(rows))
    if not all(r.passed for r in rows):
        raise typer.Exit(code=1)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
