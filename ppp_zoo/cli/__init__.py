"""The ``ppp-zoo`` command line: a thin layer that parses, calls one function, reports.

Every failure the user can cause (a missing or unreadable file, a wrong shape, bad
parameter values) ends with one ``error: ...`` line on stderr and exit code 1, and no
output file is written.

This module creates :data:`app` (the ``ppp-zoo`` entry point) and registers the commands,
in the order ``ppp-zoo --help`` lists them. The commands live by job:

- ``_common.py``: the error reporting every command shares (``reports_errors``,
  ``--traceback``) and the progress output;
- ``_assembly.py``: ``targets``, ``postprocess``, ``evaluate``;
- ``_data.py``: ``data sample``, ``data synth-worms``, ``data synth-nuclei``;
- ``_segment.py``: ``predict``, ``segment``, ``models``, ``doctor``;
- ``_train.py``: ``train``, ``export``, ``validate``.
"""

from __future__ import annotations

import typer

from ._assembly import evaluate, postprocess, targets
from ._common import INTERNAL_ERROR_EXIT, _options, reports_errors
from ._data import data_sample, data_synth_nuclei, data_synth_worms
from ._segment import doctor, models, predict, segment
from ._train import export_command, train, validate

app = typer.Typer(
    name="ppp-zoo",
    help="PatchPerPix instance segmentation: targets, instance assembly, evaluation, data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Sample and synthetic data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

app.callback()(_options)
for _command in (targets, postprocess, evaluate):
    app.command()(_command)
data_app.command("sample")(data_sample)
data_app.command("synth-worms")(data_synth_worms)
data_app.command("synth-nuclei")(data_synth_nuclei)
for _command in (train, predict, segment, models, doctor):
    app.command()(_command)
app.command("export")(export_command)
app.command()(validate)
del _command


def main() -> None:  # pragma: no cover - entry point
    app()


__all__ = [
    "INTERNAL_ERROR_EXIT",
    "app",
    "data_app",
    "data_sample",
    "data_synth_nuclei",
    "data_synth_worms",
    "doctor",
    "evaluate",
    "export_command",
    "main",
    "models",
    "postprocess",
    "predict",
    "reports_errors",
    "segment",
    "targets",
    "train",
    "validate",
]
