"""bioimageio.core's model test of a package, one weight format at a time.

The test loads the package, checks its description (and the files it names, by their
checksums), runs the test input through the declared preprocessing and the weights, compares
the result with the test outputs, and repeats the inference at several input sizes
(``min + n * step``) with batch sizes 1 and 2. Only the status ``"passed"`` means all of this
worked: a package whose inference fails reports ``"valid-format"``.

``ppp-zoo validate --for bioimageio`` (:mod:`.compat`) and the export
(:mod:`ppp_zoo.export.validation`) both run it from here. bioimageio.core, and the torch
its test of TorchScript weights needs, are imported only when a test runs.

The HTTP timeout of bioimageio.spec's link checks (``cite`` URLs) is set low for the test,
:data:`HTTP_TIMEOUT_S` seconds unless ``BIOIMAGEIO_HTTP_TIMEOUT`` says otherwise, and put
back afterwards (:func:`bioimageio_http_timeout`); importing this module changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

#: weight formats this project writes, in the order they are tested
WEIGHT_FORMATS: tuple[str, ...] = ("torchscript", "onnx")

#: seconds bioimageio.spec waits for an HTTP answer while a package is tested
HTTP_TIMEOUT_S = 3.0
HTTP_TIMEOUT_VARIABLE = "BIOIMAGEIO_HTTP_TIMEOUT"


@dataclasses.dataclass(frozen=True)
class ValidationRow:
    """Result of bioimageio.core's test of one weight format.

    ``status`` is bioimageio.core's summary status (``"passed"``, ``"valid-format"`` or
    ``"failed"``); ``error`` the first error message, or ``""``.
    """

    weight_format: str
    status: str
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def bioimageio_http_timeout(seconds: float = HTTP_TIMEOUT_S) -> Iterator[None]:
    """bioimageio.spec's HTTP timeout set to ``seconds`` inside the block, then restored.

    When ``BIOIMAGEIO_HTTP_TIMEOUT`` is set, its value is used instead. bioimageio.spec
    reads the environment once, when it is first imported, so the setting itself is
    changed here; the environment is left as it is.
    """
    from bioimageio.spec import settings

    wanted = os.environ.get(HTTP_TIMEOUT_VARIABLE)
    try:
        timeout = float(wanted) if wanted is not None else float(seconds)
    except ValueError:  # bioimageio.spec refuses such a value itself
        timeout = settings.http_timeout
    before = settings.http_timeout
    settings.http_timeout = timeout
    try:
        yield
    finally:
        settings.http_timeout = before


def _weight_formats(source: Path) -> list[str]:
    from bioimageio.spec import InvalidDescr, load_model_description

    try:
        descr = load_model_description(source, perform_io_checks=False)
    except Exception as err:  # noqa: BLE001 - corrupt zip, unreadable yaml, ...
        raise UserError(f"{source}: not a readable model package "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                         ) from None
    if isinstance(descr, InvalidDescr):
        raise UserError(  # noqa: TRY004 - a bad file, not a bad argument type
            f"{source}: invalid model description "
                         f"({_first_error(descr.validation_summary)})")
    return [wf for wf in WEIGHT_FORMATS if getattr(descr.weights, wf, None) is not None]


def _first_error(summary) -> str:
    for detail in summary.details:
        for err in detail.errors:
            loc = ".".join(map(str, err.loc))
            return f"{loc}: {err.msg}".strip(": ").splitlines()[0]
    return summary.status


def validate_package(source: str | os.PathLike, weight_formats=None) -> list[ValidationRow]:
    """Run ``bioimageio.core.test_model`` for each weight format of a model package.

    Parameters
    ----------
    source : path-like
        Model package: a ``.zip`` or a folder with ``rdf.yaml`` (or the ``rdf.yaml`` itself).
    weight_formats : sequence of str or None
        Formats to test; default every format of :data:`WEIGHT_FORMATS` the package has.

    Returns
    -------
    rows : list of ValidationRow
        One per tested weight format.

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    ValueError
        If ``source`` is not a readable model description or has none of the formats.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file")
    available = _weight_formats(source)
    formats = available if weight_formats is None else list(weight_formats)
    missing = [wf for wf in formats if wf not in available]
    if missing or not formats:
        raise UserError(f"{source}: no {', '.join(missing) or 'supported'} weights "
                         f"(the package has: {', '.join(available) or 'none'})")
    from bioimageio.core import test_model

    rows = []
    with bioimageio_http_timeout():
        for wf in formats:
            summary = test_model(source, weight_format=wf)
            error = "" if summary.status == "passed" else _first_error(summary)
            rows.append(ValidationRow(wf, str(summary.status), error))
    return rows


def format_table(rows: list[ValidationRow]) -> str:
    """The rows as a small text table (weight format | status)."""
    lines = ["weight format | status", "------------- | ------"]
    for row in rows:
        status = row.status if row.passed or not row.error else f"{row.status}: {row.error}"
        lines.append(f"{row.weight_format:<13} | {status}")
    return "\n".join(lines)


__all__ = ["HTTP_TIMEOUT_S", "WEIGHT_FORMATS", "ValidationRow", "bioimageio_http_timeout",
           "format_table", "validate_package"]
