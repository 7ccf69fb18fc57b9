"""Will a model package run in deepImageJ, ilastik and the bioimage.io collection?

Each tool's requirements are written down here as rules, read from what the tools' code
enforces (deepImageJ 3 on JDLL 0.6, ilastik 1.4 with tiktorch, bioimageio.core 0.11 and the
collection's compatibility checks); :func:`check_package` evaluates them on a package. The
tools cannot be installed next to Python here, but the bioimage.io readers that ilastik
ships can: the ``ilastik`` rules end with loading the package in each of them
(:mod:`.readers`), and the ``deepimagej`` rules start with JDLL's reading of every field
(:mod:`.jdll`). A rule that fails names the reason; one that could not be run (a reader
that could not be installed offline) says so and is not a pass; :func:`format_rules`
prints them as a table.

The rules need only numpy, pyyaml and ONNX Runtime (the consumer install), except
``bioimageio/test_model``, which runs bioimageio.core's model test (the ``train`` extra).
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..errors import UserError
from .jdll import jdll_reading
from .package import ModelPackage, open_package
from .readers import READERS, Reader, check_with_reader

TOOLS: tuple[str, ...] = ("deepimagej", "ilastik", "bioimageio")

DEEPIMAGEJ_MAX_OPSET = 18
"""JDLL's newest ONNX Runtime (1.13.1) reads opsets up to 18."""
DEEPIMAGEJ_OUTPUT_BYTES = 2**31
"""JDLL refuses a tile whose output exceeds 2^31 bytes (``checkOutputSize``)."""
DEEPIMAGEJ_ONE_TILE_PIXELS = 2048 * 2048
"""A package should let deepImageJ run an image of this many pixels (voxels) as one tile."""
DEEPIMAGEJ_ATOL, DEEPIMAGEJ_RTOL = 1.5e-4, 1e-4
"""The collection's deepImageJ check: ``|out - expected| <= 1.5e-4 + 1e-4 |expected|``."""
ILASTIK_MESSAGE_BYTES = 100 * 2**20
"""tiktorch's gRPC messages are capped at 100 MiB, both ways, also in local mode."""
ILASTIK_TILE = {2: 512, 3: 64}
"""ilastik's tile target for parameterized inputs (``get_best_tile_shape``)."""
ILASTIK_AXES = {"batch", "time", "z", "y", "x", "channel"}
#: operators of our traced networks, all present in PyTorch 2.0 (deepImageJ's engine)
TORCH_2_0_OPS = frozenset({
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d",
    "cat", "max_pool2d", "max_pool3d", "avg_pool2d", "avg_pool3d", "relu", "relu_",
    "leaky_relu", "sigmoid", "softmax", "tanh", "add", "add_", "sub", "mul", "div",
    "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
    "upsample_trilinear3d", "constant_pad_nd", "pad", "slice", "select", "contiguous",
    "batch_norm", "instance_norm", "group_norm", "dropout", "view", "reshape", "permute",
    "size", "to", "clamp", "narrow"})
_TS_CALL = re.compile(r"\btorch\.(?:ops\.aten\.)?([A-Za-z_][A-Za-z_0-9]*)\(")


@dataclasses.dataclass(frozen=True)
class RuleResult:
    """One rule of one tool, evaluated on a package.

    Attributes
    ----------
    tool : str
        ``"deepimagej"``, ``"ilastik"`` or ``"bioimageio"``.
    rule : str
        Short name of the requirement.
    passed : bool
    detail : str
        What was found (the reason, when it fails).
    enforced_by : str
        Where the tool enforces it.
    """

    tool: str
    rule: str
    passed: bool
    detail: str
    enforced_by: str
    checked: bool = True

    @property
    def result(self) -> str:
        """``"pass"``, ``"FAIL"`` or ``"not checked"`` (the check could not be run here,
        e.g. a reader environment that could not be installed offline)."""
        return "not checked" if not self.checked else "pass" if self.passed else "FAIL"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "result": self.result}


def _parse_tools(tools: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(tools, str):
        tools = [t.strip().lower() for t in tools.split(",") if t.strip()]
    tools = tuple(dict.fromkeys(tools))
    unknown = [t for t in tools if t not in TOOLS]
    if unknown or not tools:
        raise UserError(f"--for takes {', '.join(TOOLS)} (comma-separated), got "
                         f"{', '.join(tools) or 'nothing'}")
    return tools


def check_package(model, tools: Sequence[str] | str = TOOLS, *, readers: bool = True,
                  say: Callable[[str], None] | None = None) -> list[RuleResult]:
    """Evaluate every rule of ``tools`` on a model package.

    ``ilastik`` includes loading the package with the bioimage.io readers that ilastik
    releases ship (:data:`ppp_zoo.runtime.readers.READERS`, each in its own environment,
    made on first use; ``readers=False`` leaves them out); ``deepimagej`` includes reading
    it as JDLL's parser does.

    Parameters
    ----------
    model : path-like or ModelPackage
        A package (.zip or folder).
    tools : sequence of str or str
        Among ``"deepimagej"``, ``"ilastik"``, ``"bioimageio"`` (a comma-separated string
        works too).
    readers : bool
        Run the real readers of ``ilastik`` (default).
    say : callable or None
        Called with a line when a reader environment is being made.

    Returns
    -------
    list of RuleResult
        In tool order, then rule order.

    Raises
    ------
    PackageError
        If the package cannot be read at all.
    ValueError
        Unknown tool names.
    """
    tools = _parse_tools(tools)
    pkg = model if isinstance(model, ModelPackage) else open_package(model)
    checks: dict[str, Callable[[ModelPackage], Iterable[RuleResult]]] = {
        "deepimagej": _deepimagej, "ilastik": _ilastik, "bioimageio": _bioimageio}
    rows = []
    for tool in tools:
        rows += checks[tool](pkg)
        if readers:
            rows += [_reader_row(pkg, reader, say) for reader in READERS if reader.tool == tool]
    return rows


def _reader_row(pkg: ModelPackage, reader: Reader, say) -> RuleResult:
    result = check_with_reader(pkg.source, reader, say)
    return RuleResult(reader.tool, f"{reader.shipped_by.split(' (')[0]} reader loads it",
                      result.passed, result.detail,
                      f"{reader.shipped_by}: {reader.label}; ilastik "
                      "applets/neuralNetwork/modelStateControl.py (load_model_description)",
                      checked=result.status != "not checked")


def format_rules(rows: Sequence[RuleResult]) -> str:
    """The rules as a text table: tool | rule | result | detail."""
    width = max([len(r.rule) for r in rows] + [4])
    lines = [f"{'tool':<10} | {'rule':<{width}} | result | detail",
             f"{'-' * 10} | {'-' * width} | ------ | ------"]
    lines += [f"{r.tool:<10} | {r.rule:<{width}} | {r.result:<6} | {r.detail}" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def _rdf_axes(tensor: dict) -> list[dict]:
    return [a for a in tensor.get("axes") or [] if isinstance(a, dict)]


def _channel_count(tensor: dict, pkg: ModelPackage) -> int:
    for axis in _rdf_axes(tensor):
        if axis.get("type") == "channel":
            names = axis.get("channel_names")
            if names:
                return len(names)
            size = axis.get("size")
            if isinstance(size, int):
                return size
    return pkg.n_output_channels


def _output_channels(pkg: ModelPackage) -> int:
    """Channels of all output tensors together, as rdf.yaml declares them."""
    return sum(_channel_count(o, pkg) for o in pkg.rdf.get("outputs") or [])


def _tile_bytes(pkg: ModelPackage, side: dict[int, int]) -> tuple[tuple[int, ...], int]:
    """The tile a tool picks with target ``side`` (smallest ``min + n*step >= side``; fixed
    sizes as they are) and the bytes of all outputs for it (float32, batch 1)."""
    tile = []
    for lo, step in zip(pkg.min_shape, pkg.step):
        target = side[pkg.ndim]
        tile.append(lo if step == 0 else lo + max(0, math.ceil((target - lo) / step)) * step)
    return tuple(tile), 4 * _output_channels(pkg) * math.prod(tile)


def _row(tool: str, rule: str, passed: bool, detail: str, where: str) -> RuleResult:
    return RuleResult(tool, rule, bool(passed), detail, where)


def _weights_entry(pkg: ModelPackage, fmt: str) -> dict:
    entry = (pkg.rdf.get("weights") or {}).get(fmt)
    return entry if isinstance(entry, dict) else {}


def torchscript_ops(data: bytes) -> set[str]:
    """Names of the torch operators a TorchScript archive's code calls."""
    ops: set[str] = set()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            if "/code/" in name and name.endswith(".py"):
                ops.update(_TS_CALL.findall(zf.read(name).decode("utf-8", "replace")))
    return ops


def _percentile_nearest_rank(x: np.ndarray, q: float) -> float:
    """deepImageJ's percentile: ``sorted[(int)(N * q / 100)]`` (clamped)."""
    flat = np.sort(x.ravel())
    return float(flat[min(len(flat) - 1, int(len(flat) * q / 100.0))])


def preprocess_like_deepimagej(x: np.ndarray, preprocessing: Sequence[dict]) -> np.ndarray:
    """The input preprocessing as deepImageJ computes it (per sample, over all axes but
    batch and channel): ``ensure_dtype`` skipped, nearest-rank percentiles for
    ``scale_range``, population standard deviation for ``zero_mean_unit_variance``."""
    out = np.asarray(x, np.float32)
    for op in preprocessing:
        kw = op["kwargs"]
        eps = float(kw.get("eps", 1e-6))
        if op["id"] == "scale_range":
            lo = _percentile_nearest_rank(out, float(kw.get("min_percentile", 0.0)))
            hi = _percentile_nearest_rank(out, float(kw.get("max_percentile", 100.0)))
            out = (out - lo) / (hi - lo + eps)
        elif op["id"] == "zero_mean_unit_variance":
            out = (out - out.mean()) / (out.std() + eps)
        elif op["id"] in ("ensure_dtype", "binarize", "clip", "scale_linear"):
            if op["id"] == "clip":
                out = np.clip(out, kw.get("min"), kw.get("max"))
            elif op["id"] == "scale_linear":
                out = out * float(kw.get("gain", 1.0)) + float(kw.get("offset", 0.0))
            elif op["id"] == "binarize":
                out = (out > float(kw.get("threshold", 0.5))).astype(np.float32)
        else:
            raise UserError(f"preprocessing {op['id']!r} is not emulated")
    return out.astype(np.float32)


def _sample_input(pkg: ModelPackage) -> tuple[np.ndarray, str]:
    """The input the collection's deepImageJ check feeds: the sample tensor (an image file)
    if present, else the test input; shaped like the test input."""
    inp = pkg.rdf["inputs"][0]
    test = np.load(io.BytesIO(pkg.read_bytes(inp["test_tensor"]["source"])), allow_pickle=False)
    sample = inp.get("sample_tensor")
    if not sample:
        return test, "test input"
    import tifffile

    name = sample["source"] if isinstance(sample, dict) else str(sample)
    image = np.asarray(tifffile.imread(io.BytesIO(pkg.read_bytes(name))), np.float32)
    if image.size != test.size:
        return image, f"sample {name} (shape {image.shape})"
    return image.reshape(test.shape), f"sample {name}"


def _runs_like_deepimagej(pkg: ModelPackage) -> RuleResult:
    where = "collection scripts/check_compatibility_deepimagej.py"
    rule = "sample gives the test output"
    try:
        x, what = _sample_input(pkg)
        out_descr = pkg.rdf["outputs"]
        expected = [np.load(io.BytesIO(pkg.read_bytes(o["test_tensor"]["source"])),
                            allow_pickle=False) for o in out_descr]
        if x.ndim != len(_rdf_axes(pkg.rdf["inputs"][0])):
            return _row("deepimagej", rule, False, f"{what} does not have the test input's "
                        "size: the outputs cannot match the test outputs", where)
        from .engine import create_engine

        fmt = "onnx" if "onnx" in pkg.weights else "torchscript"
        with create_engine(pkg, fmt, "cpu") as engine:
            got = engine(preprocess_like_deepimagej(x, pkg.preprocessing))
    except Exception as err:  # noqa: BLE001 - any failure means the tool would fail too
        return _row("deepimagej", rule, False, f"cannot run it: {type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}", where)
    worst = 0.0
    for g, e, o in zip(got, expected, out_descr):
        if g.shape != e.shape:
            return _row("deepimagej", rule, False, f"output {o.get('id')} has shape "
                        f"{g.shape}, the test output {e.shape}", where)
        excess = np.abs(g - e) - (DEEPIMAGEJ_ATOL + DEEPIMAGEJ_RTOL * np.abs(e))
        worst = max(worst, float(excess.max()))
        if (excess > 0).any():
            return _row("deepimagej", rule, False, f"{int((excess > 0).sum())} values of "
                        f"{o.get('id')} differ beyond 1.5e-4 + 1e-4|x| (nearest-rank "
                        f"percentiles, {fmt})", where)
    return _row("deepimagej", rule, True, f"{what} through nearest-rank preprocessing and "
                f"{fmt}: every value within tolerance", where)


# --------------------------------------------------------------------------- deepImageJ
def _deepimagej(pkg: ModelPackage) -> list[RuleResult]:
    rdf = pkg.rdf
    rows = [_row("deepimagej", f"JDLL reads the {group.name}", not group.problems,
                 "; ".join(group.problems[:3]) + (f" (and {len(group.problems) - 3} more)"
                                                  if len(group.problems) > 3 else "")
                 if group.problems else "every field has the form JDLL casts it to",
                 group.source)
            for group in jdll_reading(rdf)]
    nickname = ((rdf.get("config") or {}).get("bioimageio") or {}).get("nickname")
    ident = rdf.get("id") or nickname
    rows.append(_row("deepimagej", "id or nickname", bool(ident),
                     f"{'id' if rdf.get('id') else 'nickname'} {ident!r}" if ident else
                     "no id and no config.bioimageio.nickname: JDLL fails on the config block "
                     "and the model vanishes from deepImageJ's list",
                     "JDLL bioimageio/description/ModelDescriptorV05.java (findID)"))
    inputs = rdf.get("inputs") or []
    rows.append(_row("deepimagej", "one input tensor", len(inputs) == 1,
                     f"{len(inputs)} input tensor(s)", "collection check; JDLL runner"))
    missing = [t.get("id") for t in inputs + (rdf.get("outputs") or [])
               for a in _rdf_axes(t) if a.get("type") == "channel"
               and not a.get("channel_names")]
    rows.append(_row("deepimagej", "channel names", not missing,
                     "every channel axis names its channels" if not missing else
                     f"channel axes without channel_names: {missing}",
                     "JDLL description/axes (0.5 axis objects)"))
    bad_step = [(lo, st) for lo, st in zip(pkg.min_shape, pkg.step) if st and lo % st]
    rows.append(_row("deepimagej", "min is a multiple of step", not bad_step,
                     f"min {list(pkg.min_shape)}, step {list(pkg.step)}",
                     "JDLL tiling/TileMaker.java (validateStepMin)"))
    if "onnx" in pkg.weights:
        opset = _weights_entry(pkg, "onnx").get("opset_version")
        ok = isinstance(opset, int) and opset <= DEEPIMAGEJ_MAX_OPSET
        rows.append(_row("deepimagej", "onnx opset <= 18", ok, f"opset {opset}",
                         "JDLL engine list: ONNX Runtime 1.12.1 (opset 17), 1.13.1 (18)"))
    if "torchscript" in pkg.weights:
        try:
            ops = torchscript_ops(pkg.read_bytes(pkg.weights["torchscript"]))
            newer = sorted(ops - TORCH_2_0_OPS)
            detail = (f"operators {', '.join(sorted(ops))}" if not newer else
                      f"operators not known to run on PyTorch 2.0: {', '.join(newer)}")
            ok = not newer
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            ok, detail = False, f"unreadable TorchScript archive ({err})"
        rows.append(_row("deepimagej", "torchscript runs on PyTorch 2.0", ok, detail,
                         "JDLL engines: every torchscript 2.x runs on PyTorch 2.0.0"))
    if not pkg.weights:
        rows.append(_row("deepimagej", "weights", False, "no torchscript or onnx weights",
                         "JDLL engines"))
    channels = _output_channels(pkg)
    max_pixels = DEEPIMAGEJ_OUTPUT_BYTES // max(4 * channels, 1)
    rows.append(_row("deepimagej", "output of one tile < 2 GiB", max_pixels >=
                     DEEPIMAGEJ_ONE_TILE_PIXELS,
                     f"{channels} float32 output channels: images up to "
                     f"{max_pixels / 1e6:.1f} M{'px' if pkg.ndim == 2 else 'voxels'} in one tile",
                     "JDLL tiling (checkOutputSize returns null above 2^31 bytes)"))
    dij = (rdf.get("config") or {}).get("deepimagej")
    tiling_ok = dij is None or bool(dij.get("allow_tiling", False))
    rows.append(_row("deepimagej", "tiling allowed", tiling_ok,
                     "no config.deepimagej block" if dij is None else
                     f"config.deepimagej.allow_tiling = {dij.get('allow_tiling')}",
                     "deepImageJ: config.deepimagej without allow_tiling disables tiling"))
    rows.append(_runs_like_deepimagej(pkg))
    return rows


# --------------------------------------------------------------------------- ilastik
def _ilastik(pkg: ModelPackage) -> list[RuleResult]:
    rdf = pkg.rdf
    rows = []
    inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
    rows.append(_row("ilastik", "one input tensor", len(inputs) == 1,
                     f"{len(inputs)} input tensor(s)", "tiktorch BIOModelData"))
    rows.append(_row("ilastik", "one output tensor", len(outputs) == 1,
                     f"{len(outputs)} output tensor(s)" + (
                         "" if len(outputs) == 1 else
                         f" ({', '.join(str(o.get('id')) for o in outputs)}): ilastik "
                         "refuses the model"),
                     "ilastik applets/neuralNetwork/modelStateControl.py"))
    ids = [str(a.get("id") or a.get("type")) for t in inputs + outputs for a in _rdf_axes(t)]
    unknown = sorted(set(ids) - ILASTIK_AXES)
    in_ids = [str(a.get("id") or a.get("type")) for a in _rdf_axes(inputs[0])] if inputs else []
    ok = not unknown and {"batch", "channel"} <= set(in_ids)
    rows.append(_row("ilastik", "axes", ok,
                     f"input axes {in_ids}" if ok else
                     f"axis ids outside {sorted(ILASTIK_AXES)}: {unknown}" if unknown else
                     f"the input lacks batch or channel: {in_ids}",
                     "ilastik utility/bioimageio_utils.py (VIGRA_TO_SPEC)"))
    same_grid = all(isinstance(a.get("size"), dict) and "tensor_id" in a["size"]
                    for o in outputs for a in _rdf_axes(o) if a.get("type") == "space")
    rows.append(_row("ilastik", "output on the input grid", same_grid,
                     "space axes of every output refer to the input's" if same_grid else
                     "an output space axis is not a size reference to the input",
                     "ilastik lazyflow/operators/tiktorch (output assumed on the input grid)"))
    has_torch = any(f in pkg.rdf.get("weights", {}) for f in
                    ("torchscript", "pytorch_state_dict"))
    rows.append(_row("ilastik", "weights ilastik can run", has_torch,
                     "torchscript present (ilastik's environment has PyTorch, no ONNX "
                     "Runtime)" if has_torch else "no torchscript or pytorch_state_dict weights",
                     "bioimageio.core weight priority in ilastik's environment"))
    tile, per_tile = _tile_bytes(pkg, ILASTIK_TILE)
    rows.append(_row("ilastik", "tile output <= 100 MiB", per_tile <= ILASTIK_MESSAGE_BYTES,
                     f"tile {'x'.join(map(str, tile))}: {per_tile / 2**20:.1f} MiB per output "
                     "message", "tiktorch server/grpc (100 MiB messages); ilastik "
                     "utility/bioimageio_utils.py get_best_tile_shape"))
    fmt = str(rdf.get("format_version", ""))
    rows.append(_row("ilastik", "spec 0.5", fmt.startswith("0.5"), f"format_version {fmt}",
                     "ilastik >= 1.4.1 reads spec 0.5"))
    return rows


# --------------------------------------------------------------------------- bioimage.io
def _bioimageio(pkg: ModelPackage) -> list[RuleResult]:
    rdf = pkg.rdf
    rows = []
    fmt = str(rdf.get("format_version", ""))
    rows.append(_row("bioimageio", "model description 0.5", rdf.get("type") == "model" and
                     fmt.startswith("0.5"), f"type {rdf.get('type')}, format_version {fmt}",
                     "bioimageio.spec"))
    online = [k for k in ("maintainers", "git_repo") if rdf.get(k)] + [
        "authors.github_user" for a in rdf.get("authors") or []
        if isinstance(a, dict) and a.get("github_user")]
    rows.append(_row("bioimageio", "validates offline", not online,
                     "no field that needs a network look-up" if not online else
                     f"{', '.join(online)} are looked up online", "bioimageio.spec I/O checks"))
    doc_ok = False
    doc = rdf.get("documentation")
    if doc:
        try:
            text = pkg.read_bytes(doc["source"] if isinstance(doc, dict) else doc).decode()
            doc_ok = "# Validation" in text
        except (ValueError, UnicodeDecodeError):
            doc_ok = False
    fair = {"documentation with '# Validation'": doc_ok, "covers": bool(rdf.get("covers")),
            "license": bool(rdf.get("license")), "cite": bool(rdf.get("cite")),
            "authors": bool(rdf.get("authors"))}
    lacking = [k for k, v in fair.items() if not v]
    rows.append(_row("bioimageio", "documentation, cover, license, cite", not lacking,
                     "all present" if not lacking else f"missing: {', '.join(lacking)}",
                     "collection upload checks"))
    import importlib.util

    # find_spec of "bioimageio.core" imports "bioimageio", which the consumer install lacks
    if importlib.util.find_spec("bioimageio") is None or \
            importlib.util.find_spec("bioimageio.core") is None or \
            importlib.util.find_spec("torch") is None:
        rows.append(RuleResult("bioimageio", "test_model", False, "not run: bioimageio.core is "
                               "not installed (pip install 'ppp-zoo[train]')",
                               "bioimageio.core", checked=False))
        return rows
    from .bioimageio_check import validate_package

    for r in validate_package(pkg.source):
        rows.append(_row("bioimageio", f"test_model ({r.weight_format})", r.passed,
                         r.status if r.passed else f"{r.status}: {r.error}",
                         "bioimageio.core test_model (the collection's check)"))
    return rows


__all__ = ["TOOLS", "RuleResult", "check_package", "format_rules",
           "preprocess_like_deepimagej", "torchscript_ops"]
