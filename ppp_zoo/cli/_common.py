"""What every command shares: the error reporting and the progress output.

:func:`reports_errors` wraps every command: the project's own errors and file-system errors
end in one ``error: ...`` line and exit code 1, any other exception is a bug (its traceback
goes to a file, exit code :data:`INTERNAL_ERROR_EXIT`). ``--traceback`` (the callback
:func:`_options`) prints the traceback of every error too. Status lines go to stderr
(:func:`_status`); on a terminal the long commands show progress (:class:`_BlockProgress`
over blocks, :func:`_step_progress` per step).
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated

import typer

from ..errors import describe, is_project_error


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

    from .. import __version__

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


def _interactive() -> bool:
    return sys.stderr.isatty()


def _step_progress(step: str) -> None:
    _status(f"  {step} ...")


def _block_progress(done: int, total: int) -> None:
    _status(f"  block {done}/{total}")


def _is_zarr(path: str) -> bool:
    from ..io import is_zarr

    return is_zarr(path)


def rich_progress(label: str):
    """A transient rich progress bar on stderr: ``label`` (a rich format string), bar, done
    of total, elapsed time."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


class _BlockProgress:
    """A progress bar over blocks (rich, on a terminal; else a line per tenth)."""

    def __init__(self, enabled: bool):
        self.enabled, self._progress, self._shown = enabled, None, -1

    def __enter__(self):
        if self.enabled:
            self._progress = rich_progress("blocks")
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
