"""The bioimage.io readers that ilastik and deepImageJ ship, on the packages ppp-zoo writes.

- The embedded packages load with the real readers of ilastik 1.4.1 (bioimageio.spec
  0.5.4.1 + core 0.8.0) and 1.4.2 (spec 0.5.9.1 + core 0.10.2, whose ``test_model`` runs the
  ONNX weights), each in its own environment (made once, ``ppp_zoo.runtime.readers``), and
  have the field forms JDLL casts to. Where no package index can be reached those readers
  are "not checked" (and the test says so); in CI they must run.
- A package as the newest bioimageio.spec writes it (``covers`` / ``documentation`` as
  maps) is refused by those readers and by JDLL's reading: the checks can fail.
- Guard: the installed bioimageio.spec, re-writing an embedded package's description,
  must give (after :func:`to_reader_forms`) the same field forms that the readers accepted.
  A new spec that writes some field in a new form fails here, before any package ships.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ppp_zoo.cli import app
from ppp_zoo.runtime import embedded_model_path, embedded_models
from ppp_zoo.runtime.compat import check_package
from ppp_zoo.runtime.jdll import jdll_reading
from ppp_zoo.runtime.readers import (
    READER_FORMAT_VERSION,
    READERS,
    check_with_reader,
    to_reader_forms,
)

EMBEDDED = [embedded_model_path(m["name"]) for m in embedded_models()]
runner = CliRunner()


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def _require_checked(result) -> None:
    if result.status == "not checked":
        if os.environ.get("CI"):
            pytest.fail(f"{result.reader.key} could not be run in CI: {result.detail}")
        pytest.skip(f"{result.reader.key} not checked here: {result.detail}")


@pytest.fixture(scope="module")
def newest_forms(tmp_path_factory) -> Path:
    """The first embedded package with its rdf.yaml as the installed bioimageio.spec writes
    it (covers and documentation as {source, sha256} maps from 0.5.11 on)."""
    pytest.importorskip("bioimageio.spec")
    from bioimageio.spec import load_model_description, save_bioimageio_package

    folder = tmp_path_factory.mktemp("newest")
    descr = load_model_description(EMBEDDED[0], perform_io_checks=False)
    return save_bioimageio_package(descr, output_path=folder / "newest.zip")


# --------------------------------------------------------------------------- the forms
def test_reader_forms_keep_checksums_where_the_old_forms_have_them():
    rdf = {"format_version": "0.5.12", "documentation": {"source": "README.md", "sha256": "a"},
           "covers": [{"source": "c.png", "sha256": "b"}, "d.png"],
           "attachments": [{"source": "x.json", "sha256": "c"}],
           "weights": {"onnx": {"source": "w.onnx", "sha256": "d"}}}
    out = to_reader_forms(rdf)
    assert out == {**rdf, "format_version": READER_FORMAT_VERSION,
                   "documentation": "README.md", "covers": ["c.png", "d.png"]}
    assert to_reader_forms(out) == out  # idempotent
    assert to_reader_forms({"format_version": "0.5.3"})["format_version"] == "0.5.3"
    assert rdf["documentation"]["sha256"] == "a"  # the input is not changed


def test_jdll_reading_finds_the_forms_it_cannot_cast():
    rdf = _rdf(EMBEDDED[0])
    assert all(not g.problems for g in jdll_reading(rdf))
    broken = {**rdf, "documentation": {"source": "README.md"}, "covers": [{"source": "c.png"}],
              "weights": {"onnx": {"source": {"uri": "w.onnx"}}}}
    broken["inputs"] = [{**rdf["inputs"][0], "test_tensor": "test_raw.npy"}]
    problems = {g.name: g.problems for g in jdll_reading(broken)}
    assert problems["top-level fields"] == [
        "documentation: a mapping where JDLL casts to String",
        "covers.0: a mapping where JDLL reads a String"]
    assert problems["tensors and axes"] == [
        ("inputs.0.test_tensor: a str where JDLL reads a mapping with a string source (the "
         "file is not found)")]
    assert problems["weights"][0].startswith("weights.onnx.source: a mapping")


# --------------------------------------------------------------------------- real readers
@pytest.mark.parametrize("package", EMBEDDED, ids=[p.stem for p in EMBEDDED])
def test_embedded_packages_load_in_the_readers_the_tools_ship(package):
    rdf = _rdf(package)
    assert rdf["format_version"] == READER_FORMAT_VERSION
    assert isinstance(rdf["documentation"], str)
    assert all(isinstance(c, str) for c in rdf["covers"])
    recorded = {r["reader"]: r["result"] for r in rdf["config"]["ppp_zoo"]["checked_with"]}
    for reader in READERS:
        assert recorded[reader.label] == "passed"
        result = check_with_reader(package, reader)
        _require_checked(result)
        assert result.status == "passed", result.detail
        assert "test_model (onnx) passed" in result.detail


@pytest.mark.parametrize("reader", READERS, ids=[r.key for r in READERS])
def test_the_readers_refuse_what_the_newest_spec_writes(newest_forms, reader):
    """Without the rewrite, the tools' readers refuse the package (the reason for it)."""
    rdf = _rdf(newest_forms)
    assert isinstance(rdf["documentation"], dict)  # bioimageio.spec >= 0.5.11
    result = check_with_reader(newest_forms, reader)
    _require_checked(result)
    assert result.status == "failed"
    assert "documentation" in result.detail and "covers.0" in result.detail


def _forms(value, path="") -> set[tuple[str, str]]:
    """(path, kind) of every field outside ``config``; list items share the path ``*``."""
    if isinstance(value, dict):
        out = {(path, "map")}
        for key, item in value.items():
            if path == "" and key == "config":
                continue
            out |= _forms(item, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(value, list):
        out = {(path, "list")}
        for item in value:
            out |= _forms(item, f"{path}.*")
        return out
    return {(path, type(value).__name__)}


def test_the_installed_spec_still_writes_forms_the_readers_read(newest_forms):
    """Guard against a new bioimageio.spec: the description it writes, rewritten for the
    readers, has exactly the field forms of the shipped package that the real readers
    (above) and JDLL's rules accept. If this fails, the installed spec writes a field in a
    new form: check it with ``ppp-zoo validate --for ilastik,deepimagej`` and extend
    ``ppp_zoo.runtime.readers.to_reader_forms``."""
    shipped = _rdf(EMBEDDED[0])
    rewritten = to_reader_forms(_rdf(newest_forms))
    new, old = _forms(rewritten), _forms(shipped)
    assert new - old == set(), f"forms the readers were not checked with: {sorted(new - old)}"
    assert all(not g.problems for g in jdll_reading(rewritten))


# --------------------------------------------------------------------------- command line
def test_validate_says_which_reader_could_not_be_checked(tmp_path, monkeypatch):
    """Offline (here: pip without an index), `validate --for ilastik` names the readers it
    could not run and does not pass."""
    monkeypatch.setenv("PPP_ZOO_READERS", str(tmp_path / "readers"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nothing"))
    package = tmp_path / "model.zip"
    shutil.copyfile(EMBEDDED[0], package)
    result = runner.invoke(app, ["validate", str(package), "--for", "ilastik"])
    assert result.exit_code == 1
    assert "not checked: ilastik 1.4.1 / 1.4.1.post1 reader loads it; ilastik 1.4.2 reader " \
           "loads it" in result.stderr
    assert "making the ilastik 1.4.1" in result.stderr
    assert result.stdout.count("not checked | could not install bioimageio.spec==") == 2
    assert "FAIL" not in result.stdout
    assert not any((tmp_path / "readers").glob("ilastik-*"))  # nothing half-made is kept


def test_validate_for_tools_runs_the_real_readers_on_the_embedded_package():
    rows = check_package(EMBEDDED[0], "deepimagej,ilastik")
    readers = [r for r in rows if r.rule.endswith("reader loads it")]
    assert len(readers) == len(READERS)
    if os.environ.get("CI"):
        assert all(r.checked for r in rows)
    assert [r for r in rows if r.checked and not r.passed] == []
    assert {r.rule for r in rows if r.rule.startswith("JDLL reads")} == {
        "JDLL reads the top-level fields", "JDLL reads the tensors and axes",
        "JDLL reads the weights", "JDLL reads the attachments"}
