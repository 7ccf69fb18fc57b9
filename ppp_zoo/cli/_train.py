"""The commands that make and check model packages: ``train`` (a network from a
configuration or preset), ``export`` (a checkpoint as a bioimage.io package) and
``validate`` (bioimageio.core's test, or the rules of deepImageJ, ilastik and bioimage.io).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from ._common import _interactive, _status, _step_progress, reports_errors


# --------------------------------------------------------------------------- train
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
    from ..config import load_config, load_preset
    from ..train import train as run_training

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


# --------------------------------------------------------------------------- export / validate
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
    from ..export import export_model

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
        from ..runtime.compat import check_package, format_rules

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
    from ..export.validation import format_table, validate_package

    rows = validate_package(model)
    typer.echo(json.dumps([r.to_dict() for r in rows]) if json_out else format_table(rows))
    if not all(r.passed for r in rows):
        raise typer.Exit(code=1)
