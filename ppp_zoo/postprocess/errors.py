"""The error of the postprocessing package (which imports nothing else of ppp_zoo).

A ``ValueError``, so callers that catch those still catch it; the command line shows its
message as one line, while a ``ValueError`` that numpy raises inside the postprocessing is
reported as a bug. ``PackageError`` (:mod:`.model_package`) is one of them.
"""

from __future__ import annotations


class PostprocessError(ValueError):
    """Arrays or parameters the assembly cannot use (a wrong shape or dtype, non-finite
    values, a parameter out of range); the message says which and what was expected."""


__all__ = ["PostprocessError"]
