"""The model packages shipped inside ppp-zoo (package data ``ppp_zoo/models/``).

``ppp_zoo/models/index.json`` lists them: ``{"models": [{"name", "file", "description",
"metrics"}, ...]}``; the first entry is the default of ``ppp-zoo segment``. They are found
with :mod:`importlib.resources`, so a regular (non-editable) install finds them too.
"""

from __future__ import annotations

import atexit
import contextlib
import json
from importlib import resources
from pathlib import Path

from .package import PackageError

_FILES = contextlib.ExitStack()
atexit.register(_FILES.close)


def _models_dir():
    return resources.files("ppp_zoo").joinpath("models")


def embedded_models() -> list[dict]:
    """Entries of ``index.json`` (an empty list when no model is shipped)."""
    index = _models_dir().joinpath("index.json")
    if not index.is_file():
        return []
    try:
        entries = json.loads(index.read_text(encoding="utf-8")).get("models", [])
    except (ValueError, AttributeError) as err:
        raise PackageError(f"ppp_zoo/models/index.json is not valid ({err})") from None
    return [e for e in entries if isinstance(e, dict) and "name" in e and "file" in e]


def _as_path(entry: dict) -> Path:
    item = _models_dir().joinpath(entry["file"])
    if not item.is_file():
        raise PackageError(f"embedded model {entry['name']!r}: ppp_zoo/models/{entry['file']} "
                           "is missing from this installation")
    if isinstance(item, Path):
        return item
    return _FILES.enter_context(resources.as_file(item))


def embedded_model_path(name: str | None = None) -> Path:
    """Path of an embedded package: ``name``, or the default (first) one.

    Raises
    ------
    PackageError
        No embedded model (or none called ``name``) in this installation.
    """
    entries = embedded_models()
    if not entries:
        raise PackageError("no embedded model in this installation (ppp_zoo/models/index.json "
                           "is missing): pass --model PACKAGE.zip")
    if name is None:
        return _as_path(entries[0])
    for entry in entries:
        if entry["name"] == name:
            return _as_path(entry)
    raise PackageError(f"no embedded model called {name!r} (embedded: "
                       f"{', '.join(e['name'] for e in entries)})")


def resolve_model(model: str | None) -> Path:
    """A package path from ``--model``: a path, the name of an embedded model, or ``None``
    for the default embedded model."""
    if model is None:
        return embedded_model_path()
    path = Path(model)
    if path.exists():
        return path
    if model in {e["name"] for e in embedded_models()}:
        return embedded_model_path(model)
    raise PackageError(f"{model}: no such model package")
