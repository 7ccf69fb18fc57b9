"""Read the postprocessing parameters (and decoder) of an exported model package.

Uses the standard library only (``zipfile``, ``json``) besides numpy: a consumer needs
neither bioimageio nor torch. The package's ``patchperpix.json`` holds the same content as
``config.patchperpix`` of its ``rdf.yaml`` (see :mod:`ppp_zoo.export`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .decode import DEFAULT_MEMORY_BUDGET, Decoder, decode, load_decoder
from .params import AssemblyParams

PARAMS_FILE = "patchperpix.json"
SUPPORTED_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """What the postprocessing takes from a model package.

    Attributes
    ----------
    assembly : AssemblyParams
        Every assembly parameter the model was trained and validated with.
    decoder : Decoder or None
        The ``ppp+dec`` patch decoder; ``None`` for ``ppp`` models.
    info : dict
        The whole ``config.patchperpix`` record (variant, halo, normalisation, training...).
    """

    assembly: AssemblyParams
    decoder: Decoder | None
    info: dict

    @property
    def variant(self) -> str:
        return self.info["variant"]

    def decode(self, numinst: np.ndarray, codes: np.ndarray, *,
               memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
        """Patches ``(P, ...)`` from the model's ``numinst`` and ``codes`` outputs."""
        if self.decoder is None:
            raise ValueError("this model outputs patches, it has no decoder")
        return decode(numinst, codes, self.decoder, self.assembly,
                      memory_budget=memory_budget)


class _PackageReader:
    """Files of a package given as a ``.zip``, a folder, or the ``rdf.yaml`` in a folder."""

    def __init__(self, path: Path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        self.path = path
        self.folder = path if path.is_dir() else path.parent if path.suffix in (
            ".yaml", ".yml") else None
        if self.folder is None and not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a model package (neither a zip nor a folder)")

    def read(self, name: str) -> bytes:
        if self.folder is not None:
            file = self.folder / name
            if not file.is_file():
                raise ValueError(f"{self.path}: no {name} (not a ppp-zoo model package)")
            return file.read_bytes()
        try:
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(name)
        except KeyError:
            raise ValueError(f"{self.path}: no {name} (not a ppp-zoo model package)") from None
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"{self.path}: unreadable zip ({err})") from None


def load_model_params(package: str | os.PathLike) -> ModelParams:
    """Assembly parameters and decoder of a model package written by ``ppp-zoo export``.

    Parameters
    ----------
    package : path-like
        The model ``.zip``, its unpacked folder, or that folder's ``rdf.yaml``.

    Returns
    -------
    ModelParams

    Raises
    ------
    FileNotFoundError
        If ``package`` does not exist.
    ValueError
        If it is not a readable ppp-zoo model package, or one of a newer format.
    """
    reader = _PackageReader(Path(package))
    try:
        info = json.loads(reader.read(PARAMS_FILE).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{package}: {PARAMS_FILE} is not valid JSON ({err})") from None
    if not isinstance(info, dict) or "assembly" not in info:
        raise ValueError(f"{package}: {PARAMS_FILE} has no 'assembly' parameters")
    if info.get("format") != SUPPORTED_FORMAT:
        raise ValueError(f"{package}: parameter format {info.get('format')!r} is not "
                         f"supported (expected {SUPPORTED_FORMAT}); update ppp-zoo")
    assembly = AssemblyParams.from_dict(info["assembly"])
    decoder = None
    if info.get("decoder"):
        decoder = load_decoder(reader.read(info["decoder"].get("source", "decoder.npz")))
        if decoder.patchshape != assembly.patchshape:
            raise ValueError(f"{package}: decoder patchshape {decoder.patchshape} differs from "
                             f"the assembly patchshape {assembly.patchshape}")
    return ModelParams(assembly=assembly, decoder=decoder, info=info)
