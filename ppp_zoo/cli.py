"""The ``ppp-zoo`` command line: a thin layer that parses, calls one function, reports.

Every failure the user can cause (a missing or unreadable file, a wrong shape, bad
parameter values) ends with one ``error: ...`` line on stderr and exit code 1, and no
output file is written.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

app = typer.Typer(
    name="ppp-zoo",
    help="PatchPerPix instance segmentation: targets, instance assembly, evaluation, data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Sample and synthetic data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


class UserError(Exception):
    """An error caused by the input, reported as one line."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def reports_errors(func):
    """Turn expected failures into one ``error:`` line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except (UserError, ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            _fail(msg)
        except MemoryError:
            _fail("out of memory (try --fast, or a smaller image)")
        except OSError as err:
            _fail(f"{err.filename or ''}: {err.strerror or err}".lstrip(": "))

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
    from .postprocess.params import parse_shape

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:
        raise UserError(f"{path}: cannot read as .npz ({type(err).__name__}: {err})") from None
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
    outputs: Annotated[Path, typer.Argument(help=".npz with 'patches' (P, [Z,] Y, X) and 'numinst' (3, [Z,] Y, X).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Label image to write (.tif, .png, .npy).")],
    patchshape: Annotated[Optional[str], typer.Option(help="Patch shape (default: the one stored in the .npz).")] = None,
    patch_threshold: Annotated[Optional[float], typer.Option(help="TH (default 0.9).")] = None,
    fc_threshold: Annotated[Optional[float], typer.Option(help="Foreground-cover threshold (default 0.5).")] = None,
    partition: Annotated[Optional[str], typer.Option(help="cc (connected components) or mws (mutex watershed).")] = None,
    min_size: Annotated[Optional[int], typer.Option(help="Remove instances smaller than this.")] = None,
    fast: Annotated[bool, typer.Option(help="Vote and rank with centres on a stride-2 grid only.")] = False,
    overlapping: Annotated[bool, typer.Option(help="Write an (N, [Z,] Y, X) stack of instance masks.")] = False,
    block: Annotated[Optional[str], typer.Option(help="Assemble in blocks of this core size (e.g. 256x256) and stitch: bounded memory for large images.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary to stdout.")] = False,
):
    """Assemble instances from PatchPerPix outputs (numinst + patches)."""
    import time

    from .io import write_labels
    from .postprocess import AssemblyParams, assemble, assemble_blockwise, parse_shape

    numinst, patches, shape = _load_outputs(outputs, patchshape)
    params = AssemblyParams(patchshape=shape).replace(
        patch_threshold=patch_threshold, fc_threshold=fc_threshold, partition=partition,
        min_size=min_size, fast=fast or None, overlapping=overlapping or None,
    )
    if block is not None:
        if overlapping:
            raise UserError("--block writes label images: it cannot be combined with --overlapping")
        t0 = time.perf_counter()
        labels = assemble_blockwise(numinst, patches, params, block_shape=parse_shape(block),
                                    progress=_block_progress if _interactive() else None)
        summary = {"n_instances": int(labels.max(initial=0)),
                   "timings": {"blockwise": round(time.perf_counter() - t0, 4)}}
        empty = not (labels > 0).any() and not _has_foreground(numinst, patches, params)
    else:
        result = assemble(numinst, patches, params, return_result=True,
                          progress=_step_progress if _interactive() else None)
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
    fast: Annotated[bool, typer.Option(help="Assemble in fast mode (stride-2 voting).")] = False,
):
    """Segment images with a trained checkpoint; writes OUTPUT/<stem>_labels.tif per image."""
    from .io import read_image, write_labels
    from .predict import load_checkpoint, predict_image

    bundle = load_checkpoint(checkpoint)
    loaded = [(path, read_image(path)) for path in images]
    output.mkdir(parents=True, exist_ok=True)
    for path, image in loaded:
        target = output / f"{path.stem}_labels.tif"
        labels = predict_image(bundle, image, fast=fast)
        write_labels(target, labels)
        _status(f"wrote {target}: {labels.shape[0] if labels.dtype == bool else int(labels.max(initial=0))} instances")


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
