"""The project's own errors, and how their causes are described in one line.

The command line reports the project's own error types as one ``error: ...`` line (exit 1):
:class:`UserError` (a bad file, image, parameter or configuration; a ``ValueError``),
:class:`SetupError` (the environment lacks something: a library, a GPU, a data package; or
a run the user can adjust went wrong), and the errors the subpackages define for their
inputs (``ppp_zoo.postprocess.PackageError``, ``ppp_zoo.runtime.InputError``), as well as
a missing file (``FileNotFoundError``) and the other file-system errors (``OSError``). Any other
exception - a ``ValueError`` that numpy raised for a shape, a ``RuntimeError`` of numba - is
a bug: the command line keeps its traceback (``ppp-zoo --traceback ...`` prints it).
"""

from __future__ import annotations


class UserError(ValueError):
    """An error caused by the input (a file, an image, a parameter, a configuration),
    reported as one line. A ``ValueError``, so callers that catch those still catch it."""


class SetupError(RuntimeError):
    """The environment cannot do what was asked (a missing library or GPU, a missing data
    package, a model that failed validation, a training run that diverged); the message
    says how to fix it."""


def is_project_error(err: BaseException) -> bool:
    """Whether ``err`` is one of the project's own error types (defined in a ``ppp_zoo``
    module): its message is written for the user.

    >>> is_project_error(UserError("bad")), is_project_error(ValueError("numpy's"))
    (True, False)
    """
    return any(cls.__module__.split(".")[0] == "ppp_zoo" and issubclass(cls, Exception)
               for cls in type(err).__mro__[:-2])


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
