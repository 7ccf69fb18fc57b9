"""How JDLL (the engine of deepImageJ 3) reads an rdf.yaml, as checks on the parsed mapping.

JDLL parses rdf.yaml with SnakeYAML into plain Java maps and lists and casts each field to
the type it expects; a field of another form is a ``ClassCastException`` or a
``NullPointerException``, and the model scan (``ModelDescriptorFactory.getModelsAtLocalRepo``)
catches it and leaves the model out of deepImageJ's list. Some forms are not errors but
are silently dropped (a weights ``source`` that is not a string: no weights file). JDLL is
Java and cannot be installed next to Python, so its reading is written down here from its
source (JDLL ``src/main/java/io/bioimage/modelrunner/bioimageio/description/``, HEAD
98d3be2); each group of checks names the files that enforce it.

The mapping is the one PyYAML's ``safe_load`` gives, which resolves scalars as SnakeYAML
does (both follow YAML 1.1: ``0.5.10`` and ``1e-06`` are strings, ``1.0`` a float).

>>> from ppp_zoo.runtime.jdll import jdll_reading
>>> [g.problems for g in jdll_reading({"format_version": "0.5.10", "name": "n",
...  "documentation": {"source": "README.md"}, "inputs": [], "outputs": [], "weights": {}})][0]
['documentation: a mapping where JDLL casts to String']
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

_DIR = "JDLL bioimageio/description/"
#: top-level fields JDLL casts with ``(String)`` (ModelDescriptor.buildModelDescription)
STRING_FIELDS = ("format_version", "name", "description", "id", "license", "documentation",
                 "git_repo", "type")
#: fields JDLL reads as lists of strings (ModelDescriptor.castListStrings; their users cast
#: each element to String)
STRING_LIST_FIELDS = ("tags", "covers", "links")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class ReadingGroup:
    """One group of JDLL's reading rules and what a description breaks of them."""

    name: str
    source: str
    problems: list[str]


def _kind(value: Any) -> str:
    return ("a mapping" if isinstance(value, Mapping) else "a list" if isinstance(value, list)
            else "null" if value is None else f"a {type(value).__name__}")


def _string(where: str, value: Any, problems: list[str], *, required: bool = False) -> None:
    if value is None:
        if required:
            problems.append(f"{where}: missing")
    elif not isinstance(value, str):
        problems.append(f"{where}: {_kind(value)} where JDLL casts to String")


def _top_level(rdf: Mapping) -> list[str]:
    problems: list[str] = []
    version = rdf.get("format_version")
    if not isinstance(version, str) or not version.startswith(("0.4", "0.5")):
        problems.append(f"format_version: {version!r} is not a string starting 0.4 or 0.5")
    for field in STRING_FIELDS:
        _string(field, rdf.get(field), problems, required=field == "name")
    for field in STRING_LIST_FIELDS:
        value = rdf.get(field)
        if isinstance(value, list):
            bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
            if bad:
                problems.append(f"{field}.{bad[0]}: {_kind(value[bad[0]])} where JDLL reads "
                                "a String")
        elif value is not None and not isinstance(value, str):
            problems.append(f"{field}: {_kind(value)} where JDLL reads a list of strings")
    for field, keys in (("authors", ("affiliation", "email", "github_user", "name", "orcid")),
                        ("cite", ("text", "doi", "url"))):
        for i, entry in enumerate(rdf.get(field) or []):
            if isinstance(entry, Mapping):
                for key in keys:
                    _string(f"{field}.{i}.{key}", entry.get(key), problems)
    for field in ("weights", "config"):
        if rdf.get(field) is not None and not isinstance(rdf[field], Mapping):
            problems.append(f"{field}: {_kind(rdf[field])} where JDLL casts to Map")
    if not isinstance(rdf.get("weights"), Mapping):
        problems.append("weights: missing")
    return problems


def _axis(where: str, axis: Any, problems: list[str]) -> None:
    if not isinstance(axis, Mapping):
        problems.append(f"{where}: {_kind(axis)} where JDLL reads an axis mapping")
        return
    _string(f"{where}.type", axis.get("type"), problems, required=True)
    _string(f"{where}.id", axis.get("id"), problems)
    kind = axis.get("type")
    if kind == "space" and axis.get("id") is None:
        problems.append(f"{where}: a space axis without id")
    if (kind == "channel" or axis.get("id") == "channel") and \
            not isinstance(axis.get("channel_names"), list):
        problems.append(f"{where}: a channel axis without channel_names")
    size = axis.get("size")
    if isinstance(size, Mapping):
        for key in ("min", "step"):
            if key in size and not isinstance(size[key], int):
                problems.append(f"{where}.size.{key}: {_kind(size[key])} (JDLL reads only "
                                "an integer)")
    elif size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        problems.append(f"{where}.size: {_kind(size)} where JDLL casts to Integer")
    for key in ("halo", "scale"):
        if axis.get(key) is not None and not isinstance(axis[key], (int, float)):
            problems.append(f"{where}.{key}: {_kind(axis[key])} where JDLL reads a Number")
    if axis.get("concatenable") is not None and not isinstance(axis["concatenable"], bool):
        problems.append(f"{where}.concatenable: {_kind(axis['concatenable'])} where JDLL "
                        "casts to boolean")


def _tensors(rdf: Mapping) -> list[str]:
    problems: list[str] = []
    input_ids = {t.get("id") for t in rdf.get("inputs") or [] if isinstance(t, Mapping)}
    for field in ("inputs", "outputs"):
        tensors = rdf.get(field)
        if not isinstance(tensors, list):
            problems.append(f"{field}: {_kind(tensors)} where JDLL reads a list of tensors")
            continue
        for i, tensor in enumerate(tensors):
            where = f"{field}.{i}"
            if not isinstance(tensor, Mapping):
                continue  # skipped by JDLL, not an error
            _string(f"{where}.id", tensor.get("id"), problems, required=True)
            _string(f"{where}.description", tensor.get("description"), problems)
            axes = tensor.get("axes")
            if not isinstance(axes, list):
                problems.append(f"{where}.axes: {_kind(axes)} where JDLL reads a list")
            else:
                for j, axis in enumerate(axes):
                    _axis(f"{where}.axes.{j}", axis, problems)
                    size = axis.get("size") if isinstance(axis, Mapping) else None
                    if field == "outputs" and isinstance(size, Mapping) and \
                            size.get("tensor_id") is not None and \
                            size["tensor_id"] not in input_ids:
                        problems.append(f"{where}.axes.{j}.size.tensor_id: "
                                        f"{size['tensor_id']!r} is not an input tensor")
            for key in ("test_tensor", "sample_tensor"):
                value = tensor.get(key)
                if value is None and key == "sample_tensor":
                    continue
                if not (isinstance(value, Mapping) and isinstance(value.get("source"), str)):
                    problems.append(f"{where}.{key}: {_kind(value)} where JDLL reads a "
                                    "mapping with a string source (the file is not found)")
            if tensor.get("data") is not None and not isinstance(tensor["data"], Mapping):
                problems.append(f"{where}.data: {_kind(tensor['data'])} (JDLL reads only a "
                                "mapping: type and unit fall back to float32)")
            for key in ("preprocessing", "postprocessing"):
                ops = tensor.get(key)
                if ops is None:
                    continue
                if not isinstance(ops, list):
                    problems.append(f"{where}.{key}: {_kind(ops)} where JDLL casts to List")
                    continue
                for k, op in enumerate(ops):
                    _operation(f"{where}.{key}.{k}", op, problems)
    return problems


def _operation(where: str, op: Any, problems: list[str]) -> None:
    if not isinstance(op, Mapping):
        problems.append(f"{where}: {_kind(op)} where JDLL casts to Map")
        return
    name = op.get("id", op.get("name"))
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        problems.append(f"{where}.id: {name!r} is not a transformation name")
    kwargs = op.get("kwargs")
    if kwargs is None:
        return
    if not isinstance(kwargs, Mapping):
        problems.append(f"{where}.kwargs: {_kind(kwargs)} where JDLL casts to Map")
        return
    for key, value in kwargs.items():
        values = value if isinstance(value, list) else [value]
        if any(v is not None and not isinstance(v, (int, float, str)) for v in values):
            problems.append(f"{where}.kwargs.{key}: {_kind(value)} (JDLL's setters take "
                            "numbers, strings or lists of them)")


def _weights(rdf: Mapping) -> list[str]:
    problems: list[str] = []
    weights = rdf.get("weights")
    if not isinstance(weights, Mapping):
        return problems
    for fmt, entry in weights.items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            problems.append(f"weights.{fmt}: {_kind(entry)} where JDLL casts to Map")
            continue
        if not isinstance(entry.get("source"), str):
            problems.append(f"weights.{fmt}.source: {_kind(entry.get('source'))}: JDLL keeps "
                            "only a string (the weights file would not be found)")
        for key in ("sha256", "parent"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                problems.append(f"weights.{fmt}.{key}: {_kind(entry[key])} (JDLL keeps only "
                                "a string)")
        for key in ("pytorch_version", "opset_version"):
            if entry.get(key) is not None and not isinstance(entry[key], (str, int, float)):
                problems.append(f"weights.{fmt}.{key}: {_kind(entry[key])}: JDLL reads no "
                                "version and picks no engine for it")
    return problems


def _attachments(rdf: Mapping) -> list[str]:
    problems: list[str] = []
    attachments = rdf.get("attachments")
    if attachments is None:
        return problems
    if not isinstance(attachments, list):
        return [f"attachments: {_kind(attachments)}: JDLL reads no attachment of it"]
    for i, item in enumerate(attachments):
        if isinstance(item, Mapping) and not isinstance(item.get("source"), str):
            problems.append(f"attachments.{i}.source: {_kind(item.get('source'))} where JDLL "
                            "casts to String")
    return problems


def jdll_reading(rdf: Mapping) -> list[ReadingGroup]:
    """Check a parsed rdf.yaml against JDLL's reading, group by group.

    Returns
    -------
    list of ReadingGroup
        Each with the JDLL files that read it and the problems found (empty: JDLL reads it).
    """
    return [
        ReadingGroup("top-level fields", f"{_DIR}ModelDescriptorFactory.java (fromMap), "
                     "ModelDescriptor.java (buildModelDescription, castListStrings, "
                     "buildAuthors, buildCiteElements)", _top_level(rdf)),
        ReadingGroup("tensors and axes", f"{_DIR}TensorSpecV05.java, AxisV05.java, "
                     "AxisSize.java, ModelDescriptorV05.java (calculateTotalInputHalo)",
                     _tensors(rdf)),
        ReadingGroup("weights", f"{_DIR}weights/ModelWeight.java, TorchscriptWeights.java, "
                     "OnnxWeights.java", _weights(rdf)),
        ReadingGroup("attachments", f"{_DIR}ModelDescriptorV05.java (buildAttachments)",
                     _attachments(rdf)),
    ]


__all__ = ["STRING_FIELDS", "STRING_LIST_FIELDS", "ReadingGroup", "jdll_reading"]
