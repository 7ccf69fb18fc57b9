"""Build a bioimage.io model package from a training checkpoint (see the package docstring).

:func:`export_model` is the one public entry point. It works in a temporary folder next to
the output, validates the finished package with bioimageio.core's test for every weight
format, and only then moves it into place: a failed export leaves nothing behind.

This module writes the package: it checks the arguments, stages the files, builds and
validates the package and records the readers it was checked with. What the package says
about itself (``rdf.yaml``, ``README.md``, the ImageJ macro) is made in
``_description.py``; its example data (test tensors, sample, example image, cover) in
``_examples.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from ..errors import SetupError, UserError
from ..predict import (
    OUTPUT_ID,
    Checkpoint,
    decoder_arrays,
    head_arrays,
    load_checkpoint,
    normalize_image,
    package_geometry,
    predict_probabilities,
)
from ..runtime.readers import write_reader_forms
from ._description import (  # noqa: F401 - the constants are importable from here too
    ABSOLUTE_TOLERANCE,
    IJ_MACRO,
    PATCHPERPIX_ARXIV_DOI,
    PATCHPERPIX_DOI,
    RELATIVE_TOLERANCE,
    _data_description,
    _describe,
    _documentation,
    _imagej_macro,
    _patchperpix_info,
)
from ._examples import (  # noqa: F401
    CLIP_FRACTION,
    SAMPLE_SIZE,
    _as_raw,
    _example_image,
    _fit,
    _reference_output,
    _with_tied_percentiles,
    _write_cover,
)
from .validation import WEIGHT_FORMATS, ValidationRow, format_table, validate_package
from .wrapper import ExportNet, run_onnx, run_torchscript, save_onnx, save_torchscript

DEFAULT_AUTHORS = ("ppp-zoo developers",)

Progress = Callable[[str], None] | None


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote.

    ``max_abs_diff`` maps ``"torchscript"`` / ``"onnx"`` to the largest absolute difference
    of its outputs from the eager PyTorch outputs on the test input.
    """

    path: str
    size_bytes: int
    seconds: float
    variant: str
    weight_formats: tuple[str, ...]
    validation: tuple[ValidationRow, ...]
    max_abs_diff: dict
    checked_with: tuple[dict, ...] = ()

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def table(self) -> str:
        lines = [format_table(list(self.validation))]
        if self.checked_with:
            lines += ["", "readers (config.ppp_zoo.checked_with):"]
            lines += [f"  {r['result']:<11} {r['reader']} ({r['used_by']})"
                      for r in self.checked_with]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["validation"] = [row.to_dict() for row in self.validation]
        return d


# --------------------------------------------------------------------------- validation
NAME_CHARACTERS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   "_+- ()")
"""Characters bioimage.io allows in a model name."""


NICKNAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789-_"


def _slug(name: str) -> str:
    text = "".join(c if c in NICKNAME_CHARACTERS else "-" for c in name.lower())
    while "--" in text:
        text = text.replace("--", "-")
    return text.strip("-_")[:64] or "patchperpix-model"


def _check_nickname(nickname: str) -> str:
    bad = sorted(set(nickname) - set(NICKNAME_CHARACTERS))
    if bad or not 3 <= len(nickname) <= 64 or not nickname[0].isalnum():
        raise UserError(f"nickname {nickname!r}: use 3-64 lowercase letters, digits, - and _ "
                         f"starting with a letter or digit (found {''.join(bad) or 'a bad length'})")
    return nickname


def _validate_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in WEIGHT_FORMATS]
    if unknown or not formats:
        raise UserError(f"weight formats must be among {', '.join(WEIGHT_FORMATS)}, "
                         f"got {', '.join(formats) or 'none'}")
    return tuple(f for f in WEIGHT_FORMATS if f in formats)


def _check_output(output: Path, folder: bool) -> None:
    """Fail early (before any work) when ``output`` cannot be written."""
    if output.exists() and output.is_dir() != folder:
        kind = "a folder" if output.is_dir() else "a file"
        raise UserError(f"{output}: exists and is {kind}")
    if not folder and output.suffix.lower() != ".zip":
        raise UserError(f"{output}: a model package file must end in .zip (or use --folder)")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{parent}: no such folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise OSError(err.errno, f"cannot write into {parent} ({err.strerror})",
                      str(output)) from None


# --------------------------------------------------------------------------- export
def _load(checkpoint: Path) -> tuple[Checkpoint, dict]:
    bundle = load_checkpoint(checkpoint)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return bundle, {k: ckpt.get(k) for k in ("training", "iteration", "best")}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_files(bundle: Checkpoint, extra: dict, folder: Path, formats: Sequence[str],
                 name: str, metrics: dict | None, progress: Progress,
                 validated: bool = True) -> tuple[dict, dict, dict]:
    from ..postprocess import assemble

    say = progress or (lambda _msg: None)
    net = bundle.model.cpu().eval()
    model = ExportNet(net).eval()
    geometry = package_geometry(bundle.model)
    files: dict[str, Path] = {}

    say("test tensors")
    image, _ = _example_image(bundle, geometry)
    test_raw = _as_raw(_fit(image, (geometry.min_size,) * geometry.ndim))
    test_raw = _with_tied_percentiles(test_raw, bundle.normalize)[None, None]
    net_input, ref_output = _reference_output(model, test_raw, bundle.normalize)
    for key, arr in (("test_raw", test_raw), (f"test_{OUTPUT_ID}", ref_output)):
        files[key] = folder / f"{key}.npy"
        np.save(files[key], np.ascontiguousarray(arr, np.float32), allow_pickle=False)
    # the sample is the test input as an image file: tools that run the sample (deepImageJ's
    # collection check) compare what they get with the test output
    files["sample_raw"] = folder / "sample_raw.tif"
    tifffile.imwrite(files["sample_raw"], test_raw[0, 0], photometric="minisblack")
    example_size = [min(SAMPLE_SIZE[geometry.ndim], max(geometry.min_size,
                                                        s // geometry.step * geometry.step))
                    for s in image.shape]
    example_raw = _as_raw(_fit(image, example_size))
    files["example_image.tif"] = folder / "example_image.tif"
    tifffile.imwrite(files["example_image.tif"], example_raw, photometric="minisblack")

    example = torch.from_numpy(np.ascontiguousarray(net_input))
    diffs = {}
    if "torchscript" in formats:
        say("torchscript")
        files["torchscript"] = save_torchscript(model, example, folder / "weights_torchscript.pt")
    if "onnx" in formats:
        say("onnx")
        files["onnx"] = save_onnx(model, example, folder / "weights.onnx", (OUTPUT_ID,))
    for wf, run in (("torchscript", run_torchscript), ("onnx", run_onnx)):
        if wf in files:  # against the eager output on the same input (the test output)
            diffs[wf] = float(np.abs(run(files[wf], net_input)[0] - ref_output).max())

    files["head.npz"] = folder / "head.npz"
    np.savez(files["head.npz"], **head_arrays(net))
    if net.decoder is not None:
        files["decoder.npz"] = folder / "decoder.npz"
        np.savez(files["decoder.npz"], **decoder_arrays(net))
    hashes = {k: _sha256(files[k]) for k in ("head.npz", "decoder.npz") if k in files}
    info = _patchperpix_info(bundle, extra, metrics, hashes)
    files["patchperpix.json"] = folder / "patchperpix.json"
    files["patchperpix.json"].write_text(json.dumps(info, indent=2), encoding="utf-8")
    files[IJ_MACRO] = folder / IJ_MACRO
    files[IJ_MACRO].write_text(_imagej_macro(geometry), encoding="utf-8")

    say("cover")
    numinst, patches = predict_probabilities(bundle, example_raw)
    labels = assemble(numinst, patches, bundle.assembly)
    files["cover.png"] = folder / "cover.png"
    _write_cover(files["cover.png"], normalize_image(example_raw, bundle.normalize), numinst,
                 labels)
    files["README.md"] = folder / "README.md"
    files["README.md"].write_text(_documentation(name, info, geometry, diffs, formats,
                                                 validated), encoding="utf-8")
    return files, info, diffs


def export_model(checkpoint: str | os.PathLike, output: str | os.PathLike, *,
                 name: str | None = None, nickname: str | None = None,
                 authors: Sequence[str] | None = None,
                 formats: Sequence[str] | str = WEIGHT_FORMATS, folder: bool = False,
                 metrics: dict | None = None, description: str | None = None,
                 validate: bool = True, check_readers: bool = False,
                 progress: Progress = None) -> ExportResult:
    """Export a training checkpoint as a validated bioimage.io model package.

    Parameters
    ----------
    checkpoint : path-like
        ``best.pt`` or ``last.pt`` written by :func:`ppp_zoo.train.train`.
    output : path-like
        The package: a ``.zip`` file, or a folder with ``folder=True``. Replaced if it
        exists, but only once the new package has passed validation.
    name : str or None
        Model name (default: from the variant, dimensions and training data).
    nickname : str or None
        Short id for tools that list models by it (``config.bioimageio.nickname``; deepImageJ
        needs one): lowercase letters, digits, ``-`` and ``_``. Default: from ``name``.
    authors : sequence of str or None
        Author names (default: "ppp-zoo developers").
    formats : sequence of {"torchscript", "onnx"} or str
        Weight formats (a comma-separated string works too).
    folder : bool
        Write an unpacked folder instead of a zip.
    metrics : dict or None
        Measured test metrics to record, e.g. ``{"dsb_test_half": {"ap50": 0.8, ...}}``.
    description : str or None
        One-paragraph description (default: generated).
    validate : bool
        Run bioimageio.core's model test for every weight format before writing (default).
        ``False`` skips it (quick iterations; the result's ``validation`` is empty).
    check_readers : bool
        Also load the package with the bioimage.io readers that ilastik 1.4.1 and 1.4.2
        ship (:data:`ppp_zoo.runtime.readers.READERS`, their environments made on first
        use) and fail if one refuses it. A reader that cannot be installed (offline) is
        recorded as ``"not checked"``.
    progress : callable or None
        Called with the name of each step.

    Returns
    -------
    ExportResult
        Path, size, seconds and the validation table.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing or unreadable checkpoint, an unsupported checkpoint version, bad
        arguments.
    OSError
        The output cannot be written.
    SetupError
        The package failed bioimageio.core's test or a reader refused it (nothing is
        written then).

    Notes
    -----
    The package is written for the readers that the tools ship, not only for the newest
    ``bioimageio.spec``: ``format_version`` 0.5.10 and plain file names for ``covers`` and
    ``documentation`` (:func:`ppp_zoo.runtime.readers.to_reader_forms`). What it was checked
    with is recorded in ``config.ppp_zoo.checked_with``.
    """
    t0 = time.perf_counter()
    formats = _validate_formats(formats)
    output = Path(output)
    _check_output(output, folder)
    if name is not None:
        bad = sorted(set(name) - set(NAME_CHARACTERS))
        if bad or not 5 <= len(name) <= 128:
            raise UserError(f"model name {name!r}: use 5-128 letters, digits and the "
                             f"characters _+- () only (found {''.join(bad) or 'a bad length'})")
    authors = tuple(a.strip() for a in (authors or DEFAULT_AUTHORS) if a and a.strip())
    if not authors:
        raise UserError("give at least one author name")
    bundle, extra = _load(Path(checkpoint))
    net = bundle.model
    source = bundle.config.get("data", {}).get("source", "custom")
    variant_name = "ppp+dec" if net.decoder is not None else "ppp"
    name = name or f"PatchPerPix {variant_name} {net.ndim}D {source}"
    nickname = _check_nickname(nickname or _slug(name))
    description = description or (
        f"PatchPerPix ({variant_name}) instance segmentation, {net.ndim}D, trained on "
        f"{_data_description(bundle.config, source)}. Outputs numinst and "
        "features; instances are assembled by ppp_zoo.postprocess with the parameters in "
        "config.patchperpix.")

    from bioimageio.spec import save_bioimageio_package_as_folder

    parent = output.parent if str(output.parent) else Path(".")
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=parent) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        files, info, diffs = _write_files(bundle, extra, src, formats, name, metrics, progress,
                                          validate)
        descr = _describe(name, nickname, authors, files, info, package_geometry(bundle.model),
                          bundle.normalize, formats, description)
        unpacked = Path(tmp) / "package"
        if progress:
            progress("package")
        save_bioimageio_package_as_folder(descr, output_path=unpacked)
        rdf_path = unpacked / "rdf.yaml"
        rdf = write_reader_forms(rdf_path)
        staged = unpacked if folder else _zip_folder(unpacked, Path(tmp) / "package.zip")
        if progress and validate:
            progress("validation")
        rows = tuple(validate_package(staged, formats)) if validate else ()
        failed = [r for r in rows if not r.passed]
        if failed:
            r = failed[0]
            raise SetupError(f"the exported package failed bioimageio.core's test for "
                               f"{r.weight_format} ({r.status}: {r.error}); nothing written")
        checked = _reader_records(staged, rdf, rows, check_readers, progress)
        write_reader_forms(rdf_path, checked)
        if not folder:
            staged = _zip_folder(unpacked, staged)
        if folder:
            if output.exists():
                shutil.rmtree(output)
            os.replace(staged, output)
            size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
        else:
            os.replace(staged, output)
            size = output.stat().st_size
    return ExportResult(path=str(output), size_bytes=int(size),
                        seconds=round(time.perf_counter() - t0, 2), variant=net.variant,
                        weight_formats=formats, validation=rows, max_abs_diff=diffs,
                        checked_with=tuple(checked))


def _zip_folder(folder: Path, output: Path) -> Path:
    """A zip of a package folder, rdf.yaml first (replaces ``output``)."""
    names = sorted((p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
                   key=lambda n: (n != "rdf.yaml", n))
    tmp = output.with_name(output.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            zf.write(folder / name, name)
    os.replace(tmp, output)
    return output


def _reader_records(staged: Path, rdf: dict, rows: Sequence[ValidationRow],
                    check_readers: bool, progress: Progress) -> list[dict]:
    """What the package ``staged`` (whose rdf.yaml is ``rdf``) was checked with, for
    ``config.ppp_zoo.checked_with``; raises if a reader refuses it."""
    import bioimageio.core
    import bioimageio.spec

    from ..runtime.jdll import jdll_reading
    from ..runtime.readers import READERS, check_with_reader

    records = []
    if rows:
        records.append({"reader": f"bioimageio.spec {bioimageio.spec.__version__} + "
                                  f"bioimageio.core {bioimageio.core.__version__}",
                        "used_by": "ppp-zoo export; the bioimage.io collection",
                        "checks": ["load"] + [f"test_model {r.weight_format}" for r in rows],
                        "result": "passed"})
    problems = [p for group in jdll_reading(rdf) for p in group.problems]
    if problems:
        raise SetupError(f"JDLL (deepImageJ) could not read the exported rdf.yaml: "
                         f"{problems[0]}; nothing written")
    records.append({"reader": "JDLL 0.6 reading rules (ppp_zoo.runtime.jdll)",
                    "used_by": "deepImageJ 3", "checks": ["field forms"], "result": "passed"})
    if check_readers:
        for reader in READERS:
            if progress:
                progress(f"reader {reader.key}")
            result = check_with_reader(staged, reader, progress)
            if result.status == "failed":
                raise SetupError(f"{result.detail}; nothing written")
            records.append(result.to_record())
    return records


def _json_default(value: Any):  # pragma: no cover - used by the CLI for --json
    return str(value)
