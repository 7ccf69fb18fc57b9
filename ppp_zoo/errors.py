"""Errors a user can cause and fix, and how their causes are described in one line.

Everything the command line reports as one ``error: ...`` line is a :class:`UserError`, a
``ValueError`` (bad input, bad file, bad parameter), a ``FileNotFoundError`` / ``OSError``,
or a :class:`SetupError` (the environment lacks something: a library, a GPU, a data package;
or a run the user can adjust went wrong). Any other exception is a bug: the command line
saves its traceback and says so.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the input, reported as one line."""


class SetupError(RuntimeError):
    """The environment cannot do what was asked (a missing library or GPU, a missing data
    package, a model that failed validation, a training run that diverged); the message
    says how to fix it."""


def describe(err: BaseException) -> str:
    """``"TypeName: first line of the message"`` (or just the type name), for wrapping a
    library's exception into one line of our own without losing what it said.

    >>> describe(ValueError("bad value\\nmore"))
    'ValueError: bad value'
    >>> describe(KeyError())
    'KeyError'
    """
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
