"""The commands on network outputs and labels: ``targets`` (the ideal network output of a
label image), ``postprocess`` (instances assembled from the outputs, in one piece, block by
block, or on dask) and ``evaluate`` (AP against ground truth).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from ..errors import SetupError, UserError
from ._common import (
    _block_progress,
    _BlockProgress,
    _interactive,
    _is_zarr,
    _status,
    _step_progress,
    reports_errors,
)


# --------------------------------------------------------------------------- targets
@reports_errors
def targets(
    labels: Annotated[Path, typer.Argument(help="Label image, or with --overlapping an (N, Y, X) mask stack.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .npz with numinst and patches.")],
    patchshape: Annotated[str, typer.Option(help="Patch shape, e.g. 25x25 or 9x9x9.")] = "25x25",
    overlapping: Annotated[bool, typer.Option(help="LABELS is a stack of instance masks.")] = False,
):
    """Write the ideal network output (GT numinst and patches) for a label image."""
    from ..data.targets import instance_targets
    from ..io import read_image, write_npz
    from ..postprocess.params import parse_shape

    shape = parse_shape(patchshape)
    lab = read_image(labels)
    numinst, patches = instance_targets(lab, shape, overlapping=overlapping)
    write_npz(output, numinst=numinst, patches=patches, patchshape=np.asarray(shape))
    _status(f"wrote {output}: numinst {numinst.shape}, patches {patches.shape}")


# --------------------------------------------------------------------------- postprocess
def _load_outputs(path: Path, patchshape: Optional[str]):
    from ..io import read_npz
    from ..postprocess.params import parse_shape

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
    model: Annotated[Optional[str], typer.Option("--model", help="Exported model package (.zip or folder) or the name of an embedded model: every parameter, and the decoding of its output, come from it; the options above override them.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Assemble a zarr OUTPUTS array block by block on a local dask cluster of this many processes (needs the [dask] extra).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="... or on the dask scheduler at this address.")] = None,
    device: Annotated[str, typer.Option(help="Where the assembly kernels run: auto (a CUDA GPU when numba finds one it can use, else the CPU), cpu or cuda (numba's CUDA target). The labels are the same.")] = "auto",
    rois: Annotated[bool, typer.Option("--rois", help="Also write <output stem>_rois.zip: one ImageJ polygon ROI per instance (Fiji's ROI Manager opens it).")] = False,
):
    """Assemble instances from PatchPerPix outputs (numinst + patches), or from a model's raw
    output with --model."""
    import time

    from ..io import write_labels
    from ..postprocess import AssemblyParams, assemble, assemble_blockwise, parse_shape
    from ..postprocess.assembly import resolve_device

    try:
        resolve_device(device)
    except RuntimeError as err:  # cuda without a usable GPU
        raise SetupError(str(err)) from None
    if model is not None:
        from ..runtime.models import resolve_model

        model = resolve_model(model)  # a package path, or an embedded model by name
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
        t0 = time.perf_counter()
        result = assemble_blockwise(numinst, patches, params, block_shape=parse_shape(block),
                                    progress=_block_progress if _interactive() else None,
                                    device=device, return_result=True)
        labels = result.labels
        summary = {"n_instances": result.n_instances, "device": result.device,
                   "timings": {"blockwise": round(time.perf_counter() - t0, 4)}}
        empty = result.n_instances == 0 and not _has_foreground(numinst, patches, params)
    else:
        result = assemble(numinst, patches, params, return_result=True,
                          progress=_step_progress if _interactive() else None, device=device)
        labels, summary, empty = result.labels, result.summary(), result.n_candidates == 0
    if empty:
        raise UserError(f"{outputs}: no foreground pixel (numinst/patch centre below the "
                        "thresholds everywhere): nothing to assemble")
    write_labels(output, labels)
    summary = {"output": str(output), **summary}
    if rois:
        from ..rois import write_rois

        summary["rois"] = str(write_rois(output.with_name(f"{output.stem}_rois.zip"), labels,
                                         overlapping=params.overlapping))
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

    from ..io import open_image_source
    from ..postprocess import AssemblyParams, load_model_params, parse_shape
    from ..runtime.distributed import assemble_distributed

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

    from ..io import read_model_output
    from ..postprocess import load_model_params, parse_shape

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


def _has_foreground(numinst, patches, params) -> bool:
    from ..postprocess.assembly import candidate_mask, foreground_classes

    return bool(candidate_mask(foreground_classes(numinst, patches, params), params).any())


# --------------------------------------------------------------------------- evaluate
@reports_errors
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted labels (or mask stack with --overlapping).")],
    gt: Annotated[Path, typer.Argument(help="Ground-truth labels (or mask stack).")],
    overlapping: Annotated[bool, typer.Option(help="Inputs are (N, Y, X) instance-mask stacks.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Score a prediction against ground truth: AP at IoU 0.1..0.95 and avAP."""
    from ..evaluate import evaluate_image
    from ..io import read_image

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
