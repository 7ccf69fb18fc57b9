"""Read a model package written by ``ppp-zoo export``: its files and its postprocessing.

This is the one reader of a package's files; ``ppp_zoo.runtime`` builds on it. It uses the
standard library (``zipfile``, ``json``, ``hashlib``) besides numpy: a consumer needs
neither bioimageio nor torch nor a YAML parser. The package's ``patchperpix.json`` holds the
same content as ``config.patchperpix`` of its ``rdf.yaml`` (see :mod:`ppp_zoo.export`).

Packages come from other people, so reading is defensive: a file name must stay inside the
package, a member whose declared size is absurd (a "zip bomb") is refused before it is
inflated, and every file whose SHA-256 the package declares is verified while it is read.

Layouts
-------
Format 2 (one output tensor): the network outputs ``numinst`` probabilities and its last
features in one tensor; ``config.patchperpix.output`` says which channels are which, and
the attached ``head.npz`` (plus ``decoder.npz`` for ``ppp+dec``) turns features into
patches. Format 1 (two output tensors, ``numinst`` and ``patches`` or ``codes``) is still
read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from .decode import (
    DEFAULT_MEMORY_BUDGET,
    DecodedPatches,
    Decoder,
    PatchHead,
    PixelDecoder,
    decode,
    decode_candidates,
    load_decoder,
    load_head,
)
from .errors import PostprocessError
from .params import AssemblyParams

PARAMS_FILE = "patchperpix.json"
SUPPORTED_FORMATS = (1, 2)
#: the newest layout, written by ``ppp-zoo export``
CURRENT_FORMAT = 2
MAX_MEMBER_BYTES = 1 << 30
"""Largest file (uncompressed) read from a package: 1 GiB."""
MAX_COMPRESSION_RATIO = 200
"""Members larger than 16 MiB that would inflate more than this are refused: weights and
network outputs compress about 1.1-2x; only crafted data (or a constant array) reaches the
~1000x that deflate allows."""
_CHUNK = 1 << 20


class PackageError(PostprocessError):
    """A model package that is missing, unreadable, tampered with or not a PatchPerPix
    package."""


class PackageFiles:
    """The files of a model package: a ``.zip``, a folder, or the ``rdf.yaml`` in a folder.

    Parameters
    ----------
    path : path-like
        The package.

    Raises
    ------
    PackageError
        If ``path`` does not exist or is neither a zip nor a folder.

    Examples
    --------
    >>> PackageFiles("no/such/model.zip")
    Traceback (most recent call last):
    ...
    ppp_zoo.postprocess.model_package.PackageError: no/such/model.zip: no such model package
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.exists():
            raise PackageError(f"{path}: no such model package")
        self.path = path
        self.folder = path if path.is_dir() else path.parent if path.suffix in (
            ".yaml", ".yml") else None
        if self.folder is None and not zipfile.is_zipfile(path):
            raise PackageError(f"{path}: not a model package (expected a .zip file or a "
                               "folder with rdf.yaml)")

    def names(self) -> list[str]:
        """File names at the package's root (and below, for a zip)."""
        if self.folder is not None:
            return sorted(p.name for p in self.folder.iterdir() if p.is_file())
        try:
            with zipfile.ZipFile(self.path) as zf:
                return zf.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise PackageError(f"{self.path}: unreadable zip ({err})") from None

    def read(self, name: str, sha256: str | None = None,
             max_bytes: int | None = None) -> bytes:
        """Content of the file ``name`` (as written in rdf.yaml), checked.

        Parameters
        ----------
        name : str
            Relative name; ``./`` is dropped; it may not leave the package.
        sha256 : str or None
            The declared checksum; verified while reading.
        max_bytes : int or None
            Refuse a file larger than this (uncompressed); default
            :data:`MAX_MEMBER_BYTES`.

        Raises
        ------
        PackageError
            Missing file, a name outside the package, an absurd size, a checksum mismatch,
            an unreadable zip.
        """
        name = _member_name(self.path, name)
        max_bytes = MAX_MEMBER_BYTES if max_bytes is None else max_bytes
        if self.folder is not None:
            data = self._read_file(name, max_bytes)
        else:
            data = self._read_zip(name, max_bytes)
        if sha256 is not None:
            digest = hashlib.sha256(data).hexdigest()
            if digest.lower() != str(sha256).lower():
                raise PackageError(f"{self.path}: {name} does not match its declared SHA-256 "
                                   f"(the package was altered or is damaged)")
        return data

    def _read_file(self, name: str, max_bytes: int) -> bytes:
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder.resolve()):
            raise PackageError(f"{self.path}: file {name!r} points outside the package")
        if not path.is_file():
            raise PackageError(f"{self.path}: the package lacks the file {name!r}")
        if path.stat().st_size > max_bytes:
            raise PackageError(f"{self.path}: {name} is {path.stat().st_size} bytes, more "
                               f"than the {max_bytes} a package file may have")
        return path.read_bytes()

    def _read_zip(self, name: str, max_bytes: int) -> bytes:
        try:
            with zipfile.ZipFile(self.path) as zf:
                try:
                    info = zf.getinfo(name)
                except KeyError:
                    raise PackageError(f"{self.path}: the package lacks the file "
                                       f"{name!r}") from None
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > max_bytes or (info.file_size > 16 * _CHUNK and
                                                  ratio > MAX_COMPRESSION_RATIO):
                    raise PackageError(
                        f"{self.path}: {name} would inflate to {info.file_size} bytes from "
                        f"{info.compress_size} (limit {max_bytes} bytes, ratio "
                        f"{MAX_COMPRESSION_RATIO}): refused")
                parts, total = [], 0
                with zf.open(info) as member:  # stops at the declared size (CRC-checked)
                    while chunk := member.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise PackageError(f"{self.path}: {name} is larger than declared")
                        parts.append(chunk)
                return b"".join(parts)
        except PackageError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise PackageError(f"{self.path}: unreadable zip member {name} ({err})") from None


def _member_name(package: Path, name: str) -> str:
    text = str(name).removeprefix("./")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not text or "://" in text or text.startswith("/") or ".." in parts:
        raise PackageError(f"{package}: file {name!r} points outside the package")
    return text


# --------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class ModelParams:
    """What the postprocessing takes from a model package.

    Attributes
    ----------
    assembly : AssemblyParams
        Every assembly parameter the model was trained and validated with.
    decoder : PatchHead, Decoder or None
        What turns the model's per-pixel output into patches: the head of a format-2
        package (followed by its code decoder for ``ppp+dec``), the code decoder of a
        format-1 ``ppp+dec`` package, or None for a format-1 ``ppp`` package (its output
        is the patches).
    info : dict
        The whole ``config.patchperpix`` record (variant, halo, normalisation, training...).
    """

    assembly: AssemblyParams
    decoder: PixelDecoder | None
    info: dict

    @property
    def variant(self) -> str:
        return self.info["variant"]

    @property
    def format(self) -> int:
        return int(self.info.get("format", 1))

    @property
    def output_channels(self) -> dict[str, tuple[int, int]] | None:
        """Format 2: ``{"numinst": (0, 3), "features": (3, 3 + F)}`` channel ranges of the
        single output tensor; None for format 1."""
        out = self.info.get("output")
        if not out:
            return None
        return {k: (int(v[0]), int(v[1])) for k, v in out["channels"].items()}

    @property
    def output_ids(self) -> tuple[str, ...]:
        """Output tensor ids: ``("prediction",)`` for format 2, else numinst and
        patches/codes."""
        if self.info.get("output"):
            return (str(self.info["output"]["tensor"]),)
        return ("numinst", "codes" if self.variant == "ppp+dec" else "patches")

    @property
    def n_output_channels(self) -> int:
        """Channels of the single output tensor (format 2), or of both together."""
        ranges = self.output_channels
        if ranges is not None:
            return max(stop for _, stop in ranges.values())
        n = self.decoder.in_channels if self.decoder is not None else \
            int(np.prod(self.assembly.patchshape))
        return 3 + n

    def split(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(numinst, features)`` views of a format-2 output ``(C, [Z,] Y, X)``."""
        ranges = self.output_channels
        if ranges is None:
            raise PostprocessError("this is a two-output (format 1) package: its outputs are "
                             "numinst and patches/codes already")
        n = self.n_output_channels
        if output.ndim != self.assembly.ndim + 1 or output.shape[0] != n:
            raise PostprocessError(f"the model's output has shape ({n}, "
                             f"{'Z, ' if self.assembly.ndim == 3 else ''}Y, X), got "
                             f"{output.shape}")
        (a, b), (c, d) = ranges["numinst"], ranges["features"]
        return output[a:b], output[c:d]

    def patches(self, numinst: np.ndarray, values: np.ndarray, *, lazy: bool = False,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, candidates_only: bool = False):
        """Patches ``(P, ...)`` from numinst and the model's per-pixel output.

        ``values`` are the features (format 2), codes (format-1 ``ppp+dec``) or patches
        (format-1 ``ppp``, returned as they are). With ``lazy=True`` the result decodes block
        by block when sliced (for :func:`~ppp_zoo.postprocess.assemble_blockwise`).
        ``candidates_only`` decodes only what ``assemble(numinst, patches, self.assembly)``
        reads, into a :class:`~ppp_zoo.postprocess.CandidatePatches`
        (:func:`~ppp_zoo.postprocess.decode_candidates`).
        """
        if self.decoder is None:
            return values
        if lazy:
            return DecodedPatches(numinst, values, self.decoder, self.assembly)
        if candidates_only:
            return decode_candidates(numinst, values, self.decoder, self.assembly,
                                     memory_budget=memory_budget)
        return decode(numinst, values, self.decoder, self.assembly, memory_budget=memory_budget)

    def decode(self, numinst: np.ndarray, values: np.ndarray, *,
               memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
        """Patches ``(P, ...)`` from the model's numinst and codes (or features); like
        :meth:`patches`, but an error for a model whose output is the patches."""
        if self.decoder is None:
            raise PostprocessError("this model outputs patches, it has no decoder")
        return self.patches(numinst, values, memory_budget=memory_budget)


def model_params_from_info(info: dict, files: PackageFiles) -> ModelParams:
    """:class:`ModelParams` from a ``config.patchperpix`` record and the package's files.

    Raises
    ------
    PackageError
        Unsupported format, bad parameters, missing or damaged head/decoder files.
    """
    where = files.path
    if not isinstance(info, dict) or "assembly" not in info:
        raise PackageError(f"{where}: {PARAMS_FILE} has no 'assembly' parameters")
    fmt = info.get("format")
    if fmt not in SUPPORTED_FORMATS:
        raise PackageError(f"{where}: parameter format {fmt!r} is not supported (expected "
                           f"one of {SUPPORTED_FORMATS}); update ppp-zoo")
    try:
        assembly = AssemblyParams.from_dict(info["assembly"])
        decoder: PixelDecoder | None = None
        if info.get("decoder"):
            entry = info["decoder"]
            decoder = load_decoder(files.read(entry.get("source", "decoder.npz"),
                                              entry.get("sha256")))
            if decoder.patchshape != assembly.patchshape:
                raise PostprocessError(f"decoder patchshape {decoder.patchshape} differs from "
                                 f"the assembly patchshape {assembly.patchshape}")
        if fmt >= 2:
            out, head = info.get("output") or {}, info.get("head") or {}
            channels = out.get("channels") or {}
            if set(channels) != {"numinst", "features"} or not head.get("source"):
                raise PostprocessError("format 2 needs output.channels {numinst, features} and a "
                                 "head file")
            decoder = load_head(files.read(head["source"], head.get("sha256")),
                                decoder if isinstance(decoder, Decoder) else None)
            lo, hi = channels["features"]
            if hi - lo != decoder.in_channels or tuple(channels["numinst"]) != (0, 3):
                raise PostprocessError(f"output channels {channels} do not fit a head reading "
                                 f"{decoder.in_channels} features")
            if decoder.patchshape != assembly.patchshape:
                raise PostprocessError(f"head patchshape {decoder.patchshape} differs from the "
                                 f"assembly patchshape {assembly.patchshape}")
    except PackageError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise PackageError(f"{where}: bad postprocessing parameters "
                           f"({type(err).__name__}: {err})") from None
    return ModelParams(assembly=assembly, decoder=decoder, info=info)


def load_model_params(package: str | os.PathLike) -> ModelParams:
    """Assembly parameters and decoding of a model package written by ``ppp-zoo export``.

    Parameters
    ----------
    package : path-like
        The model ``.zip``, its unpacked folder, or that folder's ``rdf.yaml``.

    Returns
    -------
    ModelParams

    Raises
    ------
    PackageError (a ValueError)
        If ``package`` does not exist, is not a readable ppp-zoo model package, is one of a
        newer format, or its files do not match their checksums.
    """
    files = PackageFiles(package)
    try:
        info = json.loads(files.read(PARAMS_FILE, max_bytes=16 * _CHUNK).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PackageError(f"{package}: {PARAMS_FILE} is not valid JSON ({err})") from None
    return model_params_from_info(info, files)


__all__ = ["CURRENT_FORMAT", "ModelParams", "PackageError", "PackageFiles", "PatchHead",
           "load_model_params", "model_params_from_info"]
