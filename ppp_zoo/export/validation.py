"""Validate a model package with bioimageio.core's model test, one weight format at a time.

The test loads the package, checks its description (and the files it names, by their
checksums), runs the test input through the declared preprocessing and the weights, compares
the result with the test outputs, and repeats the inference at several input sizes
(``min + n * step``) with batch sizes 1 and 2. Only the status ``"passed"`` means all of this
worked: a package whose inference fails reports ``"valid-format"``.

The test itself lives in :mod:`ppp_zoo.runtime.bioimageio_check` (``ppp-zoo validate --for
bioimageio`` runs it too); this module is where the export and the ``validate`` command
find it.

Nothing here needs the network: packages written by :func:`~ppp_zoo.export.export_model`
name no GitHub user and no maintainer (both would be looked up online), and the HTTP
timeout for the link checks of ``cite`` URLs is set low while a package is tested
(``BIOIMAGEIO_HTTP_TIMEOUT``, default here 3 s, see
:func:`~ppp_zoo.runtime.bioimageio_check.bioimageio_http_timeout`); importing this module
sets no environment variable.
"""

from __future__ import annotations

from ..runtime.bioimageio_check import (  # noqa: F401 - the names export and cli use
    HTTP_TIMEOUT_S,
    WEIGHT_FORMATS,
    ValidationRow,
    _first_error,
    _weight_formats,
    bioimageio_http_timeout,
    format_table,
    validate_package,
)

__all__ = ["HTTP_TIMEOUT_S", "WEIGHT_FORMATS", "ValidationRow", "bioimageio_http_timeout",
           "format_table", "validate_package"]
