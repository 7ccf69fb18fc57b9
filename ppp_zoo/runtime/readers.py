"""The bioimage.io readers that ilastik and deepImageJ ship: writing for them, loading with them.

A tool reads a model package with the bioimage.io reader it bundles, long before any of its
own rules apply, and those readers are older than the newest ``bioimageio.spec``:

========================== ============================================== ==================
tool                       reader it ships                                 pinned in
========================== ============================================== ==================
ilastik 1.4.2              tiktorch 26.5.0 -> bioimageio.core 0.10.2 ->    ilastik conda
                           bioimageio.spec 0.5.9.1 (pydantic < 2.12)       recipe, tiktorch
                                                                           ``setup.py``
ilastik 1.4.1, 1.4.1.post1 tiktorch 25.4.0 -> core 0.8.0 -> spec 0.5.4.1   same files
deepImageJ 3 / JDLL 0.6    its own SnakeYAML parser                        ``ModelDescriptor*.java``
========================== ============================================== ==================

``bioimageio.spec`` 0.5.11 started writing ``covers`` and ``documentation`` as
``{source, sha256}`` maps; every reader above wants plain file names there (JDLL casts
``documentation`` to ``String``). :func:`to_reader_forms` rewrites a description into the
forms all of them read: ``format_version`` :data:`READER_FORMAT_VERSION` (older specs accept
a newer 0.5.x and upgrade an older one) and plain-string ``covers`` / ``documentation``. The
other files keep their SHA-256 (weights, test and sample tensors, attachments: maps are
allowed there in every 0.5 reader).

:func:`check_with_reader` loads a package with the real reader of an ilastik release: a
virtual environment with exactly the bioimageio packages that release pins, made once on
first use under :func:`readers_dir` (``pip`` from the package index; offline, the reader is
reported as *not checked*, never as passed), and ``bioimageio.core.test_model`` on the ONNX
weights where the reader has a core. JDLL is Java and cannot be installed here: its reading
rules are checked by :mod:`.compat` (``validate --for deepimagej``).

Needs only the standard library and pyyaml (the consumer install).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: the ``format_version`` written into packages: read by bioimageio.spec 0.5.0 .. 0.5.12
#: (older readers treat it as their own 0.5.x) and by JDLL (any string starting "0.5")
READER_FORMAT_VERSION = "0.5.10"
#: top-level fields that readers before bioimageio.spec 0.5.11 (and JDLL) read as plain
#: file names: field -> "one" (a string) or "list" (a list of strings)
PLAIN_FILE_FIELDS: dict[str, str] = {"documentation": "one", "covers": "list"}
#: seconds allowed for making a reader environment and for one probe
INSTALL_TIMEOUT, PROBE_TIMEOUT = 1200, 900


@dataclasses.dataclass(frozen=True)
class Reader:
    """A bioimage.io reader as a tool ships it.

    Attributes
    ----------
    key : str
        Short name, also the folder of its environment (``"ilastik-1.4.2"``).
    tool : str
        ``"ilastik"`` (the tool of :mod:`.compat` whose rules it belongs to).
    shipped_by : str
        Which tool release bundles it, and how.
    requirements : tuple of str
        What its environment installs (pip requirement strings).
    test_formats : tuple of str
        Weight formats run through that core's ``test_model`` after loading.
    """

    key: str
    tool: str
    shipped_by: str
    requirements: tuple[str, ...]
    test_formats: tuple[str, ...] = ("onnx",)

    @property
    def label(self) -> str:
        """``"bioimageio.spec 0.5.4.1 + bioimageio.core 0.8.0"``: the versions it runs."""
        pins = [r.split("==") for r in self.requirements if r.startswith("bioimageio.")]
        return " + ".join(f"{n} {v}" for n, v in sorted(pins, key=lambda p: p[0], reverse=True))


#: the readers checked by ``validate --for ilastik``, oldest first. ONNX is what their
#: ``test_model`` runs here: ilastik's own environment runs the TorchScript weights, whose
#: loading these environments would need a 2 GB PyTorch for (``test_model`` of the
#: TorchScript weights runs with the newest core at export)
READERS: tuple[Reader, ...] = (
    Reader("ilastik-1.4.1", "ilastik",
           "ilastik 1.4.1 / 1.4.1.post1 (tiktorch 25.4.0)",
           ("bioimageio.spec==0.5.4.1", "bioimageio.core==0.8.0", "onnxruntime")),
    Reader("ilastik-1.4.2", "ilastik", "ilastik 1.4.2 (tiktorch 26.5.0)",
           ("bioimageio.spec==0.5.9.1", "bioimageio.core==0.10.2",
            "pydantic>=2.10.3,<2.12", "onnxruntime")),
)


class ReaderUnavailable(RuntimeError):
    """A reader's environment could not be made (offline, no index, no disk)."""


@dataclasses.dataclass(frozen=True)
class ReaderResult:
    """What one reader made of a package.

    ``status`` is ``"passed"`` (loaded, and every ``test_model`` passed), ``"failed"`` (the
    reader refused the package or a test did not pass) or ``"not checked"`` (the reader
    could not be run; ``detail`` says why).
    """

    reader: Reader
    status: str
    detail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_record(self) -> dict:
        """The entry written into a package's ``config.ppp_zoo.checked_with``."""
        return {"reader": self.reader.label, "used_by": self.reader.shipped_by,
                "checks": ["load"] + [f"test_model {wf}" for wf in self.reader.test_formats],
                "result": self.status}


# --------------------------------------------------------------------------- writing
def to_reader_forms(rdf: Mapping[str, Any]) -> dict:
    """A copy of an rdf.yaml mapping in the forms every tool's reader reads.

    ``format_version`` becomes :data:`READER_FORMAT_VERSION` (unless it is older), and the
    fields of :data:`PLAIN_FILE_FIELDS` become plain file names (a ``{source, sha256}``
    map loses its checksum there: the older forms have no place for it). Everything else
    is kept as it is.

    >>> to_reader_forms({"format_version": "0.5.12", "documentation": {"source": "README.md",
    ...                  "sha256": "ab"}, "covers": [{"source": "cover.png"}]})
    {'format_version': '0.5.10', 'documentation': 'README.md', 'covers': ['cover.png']}
    """
    out = dict(rdf)
    version = str(out.get("format_version", ""))
    if version.startswith("0.5.") and _version(version) > _version(READER_FORMAT_VERSION):
        out["format_version"] = READER_FORMAT_VERSION
    for field, kind in PLAIN_FILE_FIELDS.items():
        if field not in out or out[field] is None:
            continue
        value = out[field]
        out[field] = ([_file_name(v) for v in value] if kind == "list" and
                      isinstance(value, list) else _file_name(value))
    return out


def _file_name(value: Any) -> Any:
    return value["source"] if isinstance(value, Mapping) and "source" in value else value


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


def write_reader_forms(rdf_path: os.PathLike, checked_with: list[dict] | None = None) -> dict:
    """Rewrite an ``rdf.yaml`` file in place with :func:`to_reader_forms`.

    ``checked_with`` (reader records, see :meth:`ReaderResult.to_record`) is stored as
    ``config.ppp_zoo.checked_with``. Returns the new mapping.
    """
    import yaml

    path = Path(rdf_path)
    rdf = to_reader_forms(yaml.safe_load(path.read_text(encoding="utf-8")))
    if checked_with is not None:
        config = dict(rdf.get("config") or {})
        config["ppp_zoo"] = {**(config.get("ppp_zoo") or {}),
                             "written_for": _written_for(), "checked_with": checked_with}
        rdf["config"] = config
    text = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True, width=100)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return rdf


def _written_for() -> str:
    return (f"format_version {READER_FORMAT_VERSION} with plain-string covers and "
            "documentation: read by bioimageio.spec 0.5.0-0.5.12 (ilastik 1.4.1, 1.4.2) "
            "and JDLL 0.6 (deepImageJ 3)")


# --------------------------------------------------------------------------- reading
def readers_dir() -> Path:
    """Where reader environments are kept: ``$PPP_ZOO_READERS``, else
    ``$XDG_CACHE_HOME/ppp-zoo/readers`` (``~/.cache/ppp-zoo/readers``)."""
    if os.environ.get("PPP_ZOO_READERS"):
        return Path(os.environ["PPP_ZOO_READERS"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ppp-zoo" / "readers"


def _python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: no lock between processes
            pass
        yield


def reader_environment(reader: Reader, say: Callable[[str], None] | None = None) -> Path:
    """The Python of ``reader``'s environment, made on first use.

    Raises
    ------
    ReaderUnavailable
        If it cannot be made (no package index, no disk); nothing half-made is kept.
    """
    env = readers_dir() / reader.key
    marker = env / "ppp-zoo-reader.json"
    wanted = {"requirements": list(reader.requirements),
              "python": ".".join(map(str, sys.version_info[:2]))}
    with _locked(readers_dir() / f".{reader.key}.lock"):
        if marker.is_file():
            try:
                if json.loads(marker.read_text()) == wanted and _python(env).exists():
                    return _python(env)
            except (OSError, json.JSONDecodeError):
                pass
        if say:
            say(f"making the {reader.shipped_by} reader environment ({reader.label}) in "
                f"{env}: once, about a minute")
        shutil.rmtree(env, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True,
                           capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
            subprocess.run([str(_python(env)), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", "--no-input", *reader.requirements],
                           check=True, capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT, env=_clean_env())
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            shutil.rmtree(env, ignore_errors=True)
            raise ReaderUnavailable(f"could not install {' '.join(reader.requirements)} "
                                    f"({_last_line(err)})") from None
        marker.write_text(json.dumps(wanted))
        if say:
            say(f"made {env} in {time.perf_counter() - t0:.0f} s")
        return _python(env)


def _last_line(err: BaseException) -> str:
    text = (getattr(err, "stderr", None) or "").strip() or str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    return lines[-1].strip()[:300] if lines else type(err).__name__


def _clean_env() -> dict:
    """The environment for a reader's processes: none of this interpreter's paths, quick
    link checks, bioimageio's cache kept apart from the user's."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.setdefault("BIOIMAGEIO_HTTP_TIMEOUT", "3")
    env.setdefault("BIOIMAGEIO_CACHE_PATH", str(readers_dir() / "bioimageio-cache"))
    env["PYTHONNOUSERSITE"] = "1"
    return env


def check_with_reader(source: os.PathLike, reader: Reader,
                      say: Callable[[str], None] | None = None) -> ReaderResult:
    """Load a package with ``reader`` (and run its ``test_model``); never raises for the
    package's faults or a missing environment: the result says what happened."""
    try:
        python = reader_environment(reader, say)
    except ReaderUnavailable as err:
        return ReaderResult(reader, "not checked", str(err))
    probe = Path(__file__).with_name("_reader_probe.py")
    cmd = [str(python), str(probe), str(Path(source).resolve()),
           "--test-model", *reader.test_formats]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                             check=False, env=_clean_env(), cwd=str(readers_dir()))
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
        found = json.loads(lines[-1]) if lines else None
    except (subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as err:
        return ReaderResult(reader, "not checked", f"the reader did not answer ({_last_line(err)})")
    if found is None:
        return ReaderResult(reader, "not checked",
                            f"the reader did not answer ({_last_line(run)})")
    if not found["loaded"]:
        return ReaderResult(reader, "failed", f"refused by {reader.label}: {found['error']}")
    if found.get("error"):
        return ReaderResult(reader, "failed", f"{reader.label}: {found['error']}")
    for wf, test in found["test_model"].items():
        if test["status"] != "passed":
            why = "; ".join(test["errors"]) or test["status"]
            return ReaderResult(reader, "failed", f"test_model ({wf}) under {reader.label}: "
                                f"{test['status']}: {why}")
    tested = ", ".join(f"test_model ({wf}) passed" for wf in found["test_model"])
    return ReaderResult(reader, "passed", f"loaded by {reader.label} as format "
                        f"{found.get('format_version')}" + (f"; {tested}" if tested else ""))


__all__ = ["PLAIN_FILE_FIELDS", "READERS", "READER_FORMAT_VERSION", "Reader", "ReaderResult",
           "ReaderUnavailable", "check_with_reader", "reader_environment", "readers_dir",
           "to_reader_forms", "write_reader_forms"]
