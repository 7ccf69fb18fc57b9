"""Open a PatchPerPix model package (bioimage.io format 0.5) without bioimageio or torch.

A package is a ``.zip`` or a folder holding ``rdf.yaml`` and the files it names. Only what
``ppp-zoo segment`` needs is read and checked here: the single input tensor (axes, channel
count, ``ParameterizedSize`` min/step, preprocessing), the outputs (ids, halo), the weight
entries and ``config.patchperpix``. Files are read into memory on request through
:class:`ppp_zoo.postprocess.PackageFiles` (the one reader of package files: names stay
inside the package, absurd sizes are refused, and every file is checked against the SHA-256
that rdf.yaml declares for it), so a zip is never extracted to disk.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..postprocess import AssemblyParams
from ..postprocess.model_package import (
    ModelParams,
    PackageError,
    PackageFiles,
    model_params_from_info,
)

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
SPACE_AXES = ("z", "y", "x")
#: format-1 packages: the second output tensor of each variant
VARIANT_OUTPUTS = {"ppp": "patches", "ppp+dec": "codes"}
RDF_MAX_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class ModelPackage:
    """What ``segment`` reads from a model package.

    Attributes
    ----------
    source : Path
        The zip file or folder.
    name : str
        The model's ``name`` in rdf.yaml.
    rdf : dict
        The parsed rdf.yaml.
    input_id : str
        Id of the single input tensor.
    space_axes : tuple of str
        ``("y", "x")`` or ``("z", "y", "x")``, in the input's order.
    n_channels : int
        Channels of the input tensor.
    min_shape, step, halo : tuple of int
        Per space axis: the smallest input size, the size increment, and the output halo
        (pixels at each tile border that are not reliable).
    preprocessing : tuple of dict
        ``{"id": op, "kwargs": {...}}`` entries of the input, applied in order.
    output_ids : tuple of str
        Output tensor ids in rdf order: one (format 2) or ``numinst`` then ``patches`` or
        ``codes`` (format 1).
    weights : dict
        Weight format (``onnx``, ``torchscript``) -> file name inside the package.
    config : dict
        ``config.patchperpix`` (variant, patchshape, assembly parameters, decoder, ...).
    checksums : dict
        File name -> SHA-256 declared in rdf.yaml; :meth:`read_bytes` verifies them.
    """

    source: Path
    name: str
    rdf: dict
    input_id: str
    space_axes: tuple[str, ...]
    n_channels: int
    min_shape: tuple[int, ...]
    step: tuple[int, ...]
    halo: tuple[int, ...]
    preprocessing: tuple[dict, ...]
    output_ids: tuple[str, ...]
    weights: dict
    config: dict
    checksums: dict = dataclasses.field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.space_axes)

    @property
    def variant(self) -> str:
        return self.config["variant"]

    @property
    def patchshape(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.config["patchshape"])

    @property
    def object_diameter(self) -> float | None:
        """Median size (pixels) of the training instances, if the package records it,
        measured as :attr:`object_size` says."""
        value = (self.config.get("training") or {}).get("object_diameter")
        return None if value is None else float(value)

    @property
    def object_size(self) -> str:
        """How :attr:`object_diameter` was measured: ``"diameter"`` (equivalent diameter;
        packages that do not say) or ``"width"`` (worm-like objects)."""
        return (self.config.get("training") or {}).get("object_size", "diameter")

    def assembly_params(self, **changes: Any) -> AssemblyParams:
        """The package's assembly parameters, with ``changes`` (``None`` ignored) applied."""
        params = AssemblyParams.from_dict(self.config.get("assembly") or
                                          {"patchshape": self.patchshape})
        return params.replace(**changes)

    @property
    def n_output_channels(self) -> int:
        """Channels of all outputs together (the single output of a format-2 package)."""
        return self.model_params.n_output_channels

    @functools.cached_property
    def model_params(self) -> ModelParams:
        """Assembly parameters and per-pixel decoding (head, code decoder), read once."""
        return model_params_from_info(self.config, PackageFiles(self.source))

    def read_bytes(self, name: str) -> bytes:
        """Content of a file of the package (a name as written in rdf.yaml), checked against
        the SHA-256 that rdf.yaml declares for it."""
        name = str(name).removeprefix("./")
        return PackageFiles(self.source).read(name, self.checksums.get(name))


def open_package(path: str | os.PathLike) -> ModelPackage:
    """Read and check a model package (``.zip`` or folder).

    Raises
    ------
    PackageError
        With one line naming the package and what is wrong with it.

    Examples
    --------
    >>> open_package("no/such/model.zip")
    Traceback (most recent call last):
    ...
    ppp_zoo.postprocess.model_package.PackageError: no/such/model.zip: no such model package
    """
    source = Path(path)
    files = PackageFiles(source)
    try:
        rdf = yaml.safe_load(files.read(_find_rdf(source, files), max_bytes=RDF_MAX_BYTES))
    except PackageError:
        raise
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise PackageError(f"{source}: not a readable model package "
                           f"({type(err).__name__}: {_first_line(err)})") from None
    try:
        return _parse_rdf(source, rdf)
    except PackageError as err:
        raise PackageError(f"{source}: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise PackageError(f"{source}: not a PatchPerPix model package "
                           f"({type(err).__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _find_rdf(source: Path, files: PackageFiles) -> str:
    names = files.names()
    for name in RDF_NAMES:
        if name in names:
            return name
    found = [n for n in names if n.endswith(".bioimageio.yaml")]
    if found:
        return found[0]
    raise PackageError(f"{source}: no rdf.yaml in the model package")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise PackageError(message)


def _source_name(entry: Any) -> str:
    """A file reference of rdf.yaml (a string or ``{source: ...}``) as a member name."""
    if isinstance(entry, Mapping):
        entry = entry.get("source")
    _require(isinstance(entry, str) and entry != "", f"bad file reference {entry!r}")
    _require("://" not in entry, f"file {entry!r} is a URL; the package must contain it")
    return entry.removeprefix("./")


def _parse_rdf(source: Path, rdf: Any) -> ModelPackage:
    _require(isinstance(rdf, Mapping), "rdf.yaml is not a mapping")
    _require(rdf.get("type") == "model", f"rdf.yaml describes a {rdf.get('type')!r}, not a model")
    inputs = rdf.get("inputs") or []
    _require(len(inputs) == 1, f"expected exactly one input tensor, found {len(inputs)}")
    inp = inputs[0]
    axes = inp.get("axes")
    _require(isinstance(axes, list) and all(isinstance(a, Mapping) for a in axes),
             "the input's axes must be a list of axis descriptions (format 0.5)")
    types = [a.get("type") for a in axes]
    _require(types[:2] == ["batch", "channel"],
             f"the input's axes must start with batch, channel; got {types}")
    channel = axes[1]
    n_channels = len(channel.get("channel_names") or [None])
    space = axes[2:]
    space_axes = tuple(str(a.get("id")) for a in space)
    _require(all(t == "space" for t in types[2:]) and space_axes in (("y", "x"), ("z", "y", "x")),
             f"the input's space axes must be (y, x) or (z, y, x); got {space_axes}")
    min_shape, step = [], []
    for a in space:
        size = a.get("size")
        if isinstance(size, int):
            min_shape.append(size)
            step.append(0)
        else:
            _require(isinstance(size, Mapping) and "min" in size,
                     f"space axis {a.get('id')}: size must be a number or {{min, step}}")
            min_shape.append(int(size["min"]))
            step.append(int(size.get("step") or 0))
    _require(all(m >= 1 for m in min_shape) and all(s >= 0 for s in step),
             f"bad input sizes: min {min_shape}, step {step}")

    outputs = rdf.get("outputs") or []
    _require(len(outputs) >= 1, "the package declares no output tensor")
    output_ids = tuple(str(o.get("id")) for o in outputs)
    halo = [0] * len(space_axes)
    for o in outputs:
        for a in o.get("axes") or []:
            if isinstance(a, Mapping) and a.get("id") in space_axes:
                i = space_axes.index(a["id"])
                halo[i] = max(halo[i], int(a.get("halo") or 0))

    weights_raw = rdf.get("weights") or {}
    weights = {fmt: _source_name(entry) for fmt, entry in weights_raw.items()
               if fmt in ("onnx", "torchscript") and entry}
    _require(weights != {}, "no onnx or torchscript weights")

    config = (rdf.get("config") or {}).get("patchperpix")
    _require(isinstance(config, Mapping),
             "rdf.yaml has no config.patchperpix: not a PatchPerPix package")
    config = dict(config)
    variant = config.get("variant")
    _require(variant in VARIANT_OUTPUTS, f"unknown variant {variant!r} in config.patchperpix")
    patchshape = config.get("patchshape")
    _require(isinstance(patchshape, list) and len(patchshape) == len(space_axes),
             f"config.patchperpix.patchshape {patchshape!r} does not fit the "
             f"{len(space_axes)} space axes")
    if config.get("output"):  # format 2: one tensor, numinst and features as channels
        expected = (str(config["output"].get("tensor")),)
    else:
        expected = ("numinst", VARIANT_OUTPUTS[variant])
    _require(output_ids == expected,
             f"outputs {list(output_ids)} do not match variant {variant!r} "
             f"(expected {', '.join(expected)})")
    if config.get("assembly") is not None:
        AssemblyParams.from_dict(config["assembly"])  # raises on bad parameters

    cfg_halo = config.get("halo")
    if isinstance(cfg_halo, list) and len(cfg_halo) == len(halo):  # rdf.yaml may omit it
        halo = [max(h, int(c)) for h, c in zip(halo, cfg_halo)]
    preprocessing = tuple({"id": str(p["id"]), "kwargs": dict(p.get("kwargs") or {})}
                          for p in inp.get("preprocessing") or [])
    return ModelPackage(
        source=source, name=str(rdf.get("name", source.stem)), rdf=dict(rdf),
        input_id=str(inp.get("id")), space_axes=space_axes, n_channels=n_channels,
        min_shape=tuple(min_shape), step=tuple(step), halo=tuple(halo),
        preprocessing=preprocessing, output_ids=output_ids, weights=weights, config=config,
        checksums=_checksums(rdf),
    )


def _checksums(node: Any, found: dict | None = None) -> dict:
    """Every ``{source, sha256}`` pair of rdf.yaml (weights, attachments, test tensors...)."""
    found = {} if found is None else found
    if isinstance(node, Mapping):
        src, digest = node.get("source"), node.get("sha256")
        if isinstance(src, str) and isinstance(digest, str) and "://" not in src:
            found[src.removeprefix("./")] = digest
        for value in node.values():
            _checksums(value, found)
    elif isinstance(node, list):
        for value in node:
            _checksums(value, found)
    return found


