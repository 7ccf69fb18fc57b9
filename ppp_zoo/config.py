"""Training configuration: a TOML file validated into frozen dataclasses.

A configuration has five sections; every key is optional and has a default::

    [data]         where the images come from and how validation is split off
    [model]        the network (variant, patch shape, U-Net size)
    [train]        optimisation (iterations, batch, crop, Adam, validation, time limit)
    [normalize]    intensity normalisation, applied per image at training and prediction
    [postprocess]  instance assembly parameters (:class:`~ppp_zoo.postprocess.AssemblyParams`)

Unknown keys and values of the wrong type are reported as a one-line ``ValueError`` that
names the section and the key. Shapes are written as lists (``[25, 25]``) or strings
(``"25x25"``).

Examples
--------
>>> cfg = parse_config('''
... [model]
... patchshape = "9x9"
... base_features = 8
... ''')
>>> cfg.model.patchshape, cfg.model.base_features, cfg.train.lr
((9, 9), 8, 0.0001)
>>> parse_config("[model]\\npatchsize = 9")
Traceback (most recent call last):
...
ppp_zoo.errors.UserError: [model]: unknown key 'patchsize' (known: base_features, code_shape, decoder_features, depth, growth, patchshape, variant)
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, get_args, get_origin

from .errors import UserError
from .postprocess.params import AssemblyParams

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Source = Literal["dsb-sample", "synth-nuclei", "synth-fluorescence-nuclei", "synth-worms",
                 "folder"]
NormalizeMode = Literal["percentile", "zero_mean_unit_variance"]
VariantName = Literal["ppp", "ppp+dec"]

FORMAT_VERSION = 1


# --------------------------------------------------------------------------- sections
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``[data]``: the training and validation images.

    ``source``: ``"dsb-sample"`` (the left half of the DSB 2018 crop; its right half is the
    test set and is never used), ``"synth-nuclei"`` (plain ellipses),
    ``"synth-fluorescence-nuclei"`` (nuclei rendered like many microscopes, see
    :func:`~ppp_zoo.data.synth_fluorescence_nuclei`), ``"synth-worms"`` (overlapping masks)
    or ``"folder"`` (``path`` with ``images/`` and ``masks/``, see
    :class:`~ppp_zoo.data.FolderDataset`). ``val_strip``: dsb-sample only, the last columns
    of the left half held out for validation. ``val_fraction``: the other sources, the
    fraction of images (the last ones) held out. ``synth``: extra keyword arguments of the
    synthetic generator (e.g. ``n_nuclei``, ``length``).

    ``synth_extra``: 2D nuclei sources, also train on this many 256 x 256
    :func:`~ppp_zoo.data.synth_fluorescence_nuclei` images (seeded by ``seed``; ``synth``
    holds their generator's arguments when the source itself is not synthetic), drawing a
    ``synth_extra_fraction`` share of the training crops from them. They are never
    validated on, and the recorded training object diameter stays that of the source.
    ``synth_val``: also validate (checkpoint choice and threshold tuning) on this many such
    images from a seed stream of their own, so that a small validation strip does not
    decide alone.
    """

    source: Source = "synth-nuclei"
    path: Optional[str] = None
    overlapping: bool = False
    n_images: int = 8
    image_size: tuple[int, ...] = (128, 128)
    seed: int = 0
    val_fraction: float = 0.25
    val_strip: int = 48
    synth: dict = dataclasses.field(default_factory=dict)
    synth_extra: int = 0
    synth_extra_fraction: float = 0.5
    synth_val: int = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``[model]``: :class:`~ppp_zoo.model.PatchPerPixNet` settings.

    ``ppp+dec`` only: ``code_shape`` ``[c0, grid...]`` (default 16x4x4 in 2D, 8x3x3x3 in 3D)
    and ``decoder_features`` (feature maps per decoder level, default 64, 32, ...) size the
    patch decoder; see :mod:`ppp_zoo.model.decoder`.
    """

    variant: VariantName = "ppp"
    patchshape: tuple[int, ...] = (25, 25)
    base_features: int = 16
    depth: int = 3
    growth: int = 2
    code_shape: Optional[tuple[int, ...]] = None
    decoder_features: Optional[tuple[int, ...]] = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``[train]``: optimisation. ``crop_size`` entries must be multiples of ``2**(depth-1)``.

    ``max_minutes`` (absent: no limit) stops training early; ``min_foreground`` and
    ``max_resample`` control the rejection of nearly empty crops. ``lr_schedule``
    ``"cosine"`` decays the learning rate to ``lr_min`` over the run (its progress is the
    larger of the iteration and the time fraction used). Augmentation: ``rotate`` (maximum
    angle in degrees of a random rotation in the Y/X plane; 0 turns it off),
    ``elastic_spacing``/``elastic_jitter`` (a random displacement with standard deviation
    ``elastic_jitter`` pixels on a control grid of this spacing, smoothly interpolated; a
    jitter of 0 turns it off), mirrors and transposes, intensity scale and shift. For
    generalisation, each of these acts on a random half of the crops when enabled: ``zoom``
    (objects resized by a factor log-uniform in [1/zoom, zoom], anti-aliased when
    shrinking), ``gamma`` (intensity gamma log-uniform in [1/gamma, gamma]), ``blur``
    (Gaussian blur, sigma uniform in [0, blur] pixels) and ``noise`` (Gaussian noise, standard
    deviation uniform in [0, noise] of the normalised intensity range). ``edge_cut``: the
    fraction of crops in which a band along one random side (a quarter to a third of the
    crop deep, at most) becomes flat background and drops its instances there: objects cut
    by a straight edge next to nothing, as at the border of a stitched or registered image
    with empty margins (0: off).
    ``patch_fg_weight``: ``ppp`` only, the weight of the patch loss at pixels of one
    instance against background pixels (1: every pixel alike, as in the paper; more makes a
    short training learn the shapes before the empty background patches).
    ``patch_samples``: ``ppp`` only; when > 0, the patch loss is taken at up to this many
    numinst == 1 pixels per batch, drawn at random, with the patch head run at those
    pixels alone (the assembly reads the patches of such pixels only; on a CPU an
    iteration costs much less than with the head and the loss at every pixel); 0: every
    pixel, weighted by ``patch_fg_weight``.
    ``decode_samples``: ``ppp+dec`` only, the numinst == 1 pixels per batch whose codes
    are decoded for the loss (the paper: 1024). ``overlap_fraction``: for overlapping instances, the fraction of crops centred on an
    overlap pixel. ``tune_thresholds``: after training, choose the assembly thresholds
    (``patch_threshold``, ``fc_threshold`` and the numinst threshold) that maximise the
    validation avAP and store them in ``best.pt``.
    """

    iterations: int = 1000
    batch_size: int = 2
    crop_size: tuple[int, ...] = (128, 128)
    lr: float = 1e-4
    beta1: float = 0.95
    seed: int = 0
    val_every: int = 250
    max_minutes: Optional[float] = None
    min_foreground: float = 0.05
    max_resample: int = 10
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min: float = 1e-5
    rotate: float = 0.0
    elastic_spacing: int = 10
    elastic_jitter: float = 0.0
    zoom: float = 1.0
    gamma: float = 1.0
    blur: float = 0.0
    noise: float = 0.0
    edge_cut: float = 0.0
    overlap_fraction: float = 0.0
    tune_thresholds: bool = False
    decode_samples: int = 1024
    patch_fg_weight: float = 1.0
    patch_samples: int = 0


@dataclasses.dataclass(frozen=True)
class NormalizeConfig:
    """``[normalize]``: ``"percentile"`` maps percentiles ``p_low``/``p_high`` of each image
    to 0/1; ``"zero_mean_unit_variance"`` standardises each image."""

    mode: NormalizeMode = "percentile"
    p_low: float = 1.0
    p_high: float = 99.8


_ASSEMBLY_KEYS = tuple(f.name for f in dataclasses.fields(AssemblyParams)
                       if f.name not in ("patchshape", "overlapping"))


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated training configuration. ``postprocess`` holds the assembly parameters
    other than ``patchshape`` (from ``[model]``) and ``overlapping`` (from ``[data]``)."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    postprocess: dict = dataclasses.field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.model.patchshape)

    def assembly_params(self, **changes: Any) -> AssemblyParams:
        """The assembly parameters of this configuration (``changes`` override fields)."""
        return AssemblyParams(patchshape=self.model.patchshape,
                              overlapping=self.data.overlapping,
                              **self.postprocess).replace(**changes)

    def to_dict(self) -> dict:
        """Plain TOML/JSON-compatible dict (``None`` values are left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            section = value if isinstance(value, dict) else dataclasses.asdict(value)
            out[f.name] = {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in section.items() if v is not None}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Config":
        return config_from_dict(d)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
             "normalize": NormalizeConfig}


# --------------------------------------------------------------------------- validation
def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _convert(where: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; return it in its canonical form."""
    origin = get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in get_args(hint) if a is not type(None)][0]
        return None if value is None else _convert(where, value, inner)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise UserError(f"{where} must be one of {', '.join(map(repr, choices))}, "
                             f"got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be a boolean (true/false), got {_type_name(value)} "
                             f"{value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {_type_name(value)} {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {_type_name(value)} {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {_type_name(value)} {value!r}")
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a table, got {_type_name(value)} {value!r}")
        return dict(value)
    if origin is tuple:  # tuple[int, ...]: a shape
        if isinstance(value, str):
            try:
                value = [int(s) for s in value.lower().split("x")]
            except ValueError:
                raise UserError(f"{where} must be a shape like 25x25 or [25, 25], "
                                 f"got {value!r}") from None
        if not isinstance(value, (list, tuple)) or not value or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise UserError(f"{where} must be a shape like 25x25 or [25, 25] (positive "
                             f"integers), got {value!r}")
        return tuple(value)
    raise TypeError(f"unsupported annotation {hint!r}")  # pragma: no cover


def _section(name: str, cls, raw: Any):
    if not isinstance(raw, Mapping):
        raise UserError(f"[{name}] must be a table, got {_type_name(raw)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in known:
            raise UserError(f"[{name}]: unknown key {key!r} (known: {', '.join(sorted(known))})")
    values = {k: _convert(f"[{name}] {k}", v, hints[k]) for k, v in raw.items()}
    return cls(**values)


def _validate_config(cfg: Config) -> None:
    d, m, t, n = cfg.data, cfg.model, cfg.train, cfg.normalize
    if d.source == "folder" and not d.path:
        raise UserError("[data] path is required when source = 'folder'")
    if d.source == "dsb-sample" and len(m.patchshape) != 2:
        raise UserError(f"[model] patchshape must be 2D for the dsb-sample, got {m.patchshape}")
    if d.source == "synth-worms" and not d.overlapping:
        raise UserError("[data] overlapping must be true for source = 'synth-worms' "
                         "(worms cross)")
    if d.n_images < 1:
        raise UserError(f"[data] n_images must be >= 1, got {d.n_images}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise UserError(f"[data] val_fraction must lie in [0, 1), got {d.val_fraction}")
    if d.val_strip < 0:
        raise UserError(f"[data] val_strip must be >= 0, got {d.val_strip}")
    if m.depth < 1 or m.base_features < 1 or m.growth < 1:
        raise UserError("[model] depth, base_features and growth must be >= 1")
    if len(m.patchshape) not in (2, 3) or any(p % 2 == 0 for p in m.patchshape):
        raise UserError(f"[model] patchshape must be 2 or 3 odd sizes, got {m.patchshape}")
    if len(t.crop_size) != len(m.patchshape):
        raise UserError(f"[train] crop_size {t.crop_size} and [model] patchshape "
                         f"{m.patchshape} differ in dimensions")
    if m.variant == "ppp" and (m.code_shape is not None or m.decoder_features is not None):
        raise UserError("[model] code_shape and decoder_features need variant = 'ppp+dec'")
    if m.variant == "ppp+dec":
        try:
            from .postprocess.code_layout import decoder_levels

            levels = decoder_levels(len(m.patchshape), m.code_shape, m.patchshape)
        except ValueError as err:
            raise UserError(f"[model] {err}") from None
        if m.decoder_features is not None and len(m.decoder_features) != levels:
            raise UserError(f"[model] decoder_features needs {levels} entries (one per "
                             f"decoder level), got {list(m.decoder_features)}")
    divisor = 2 ** (m.depth - 1)
    if any(c % divisor for c in t.crop_size):
        raise UserError(f"[train] crop_size {t.crop_size} must be multiples of {divisor} "
                         f"(2**(depth-1) for depth {m.depth})")
    for key in ("iterations", "batch_size", "val_every", "max_resample", "decode_samples"):
        if getattr(t, key) < 1:
            raise UserError(f"[train] {key} must be >= 1, got {getattr(t, key)}")
    if t.lr <= 0 or not 0 <= t.beta1 < 1:
        raise UserError(f"[train] lr must be > 0 and beta1 in [0, 1), got {t.lr}, {t.beta1}")
    if t.max_minutes is not None and t.max_minutes <= 0:
        raise UserError(f"[train] max_minutes must be > 0, got {t.max_minutes}")
    if not 0 <= t.overlap_fraction <= 1:
        raise UserError(f"[train] overlap_fraction must lie in [0, 1], got {t.overlap_fraction}")
    if t.rotate < 0 or t.elastic_jitter < 0 or t.elastic_spacing < 2:
        raise UserError("[train] rotate and elastic_jitter must be >= 0 and elastic_spacing "
                         ">= 2")
    if not t.patch_fg_weight >= 1:
        raise UserError(f"[train] patch_fg_weight must be >= 1, got {t.patch_fg_weight}")
    if t.patch_samples < 0:
        raise UserError(f"[train] patch_samples must be >= 0, got {t.patch_samples}")
    if t.patch_samples and (m.variant != "ppp" or t.patch_fg_weight != 1):
        raise UserError("[train] patch_samples is for the ppp variant, without "
                        "patch_fg_weight (the sampled pixels are all of one instance)")
    if not 0 <= t.edge_cut <= 1:
        raise UserError(f"[train] edge_cut is a fraction of the crops in [0, 1], got {t.edge_cut}")
    if t.zoom < 1 or t.gamma < 1 or t.blur < 0 or t.noise < 0:
        raise UserError("[train] zoom and gamma must be >= 1 (1: off), blur and noise >= 0")
    if d.synth_extra < 0 or not 0 < d.synth_extra_fraction < 1:
        raise UserError("[data] synth_extra must be >= 0 and synth_extra_fraction in (0, 1)")
    if (d.synth_extra or d.synth_val) and (d.overlapping or len(m.patchshape) != 2):
        raise UserError("[data] synth_extra and synth_val add 2D nuclei: they need a 2D "
                         "model and overlapping = false")
    if d.synth_val < 0:
        raise UserError(f"[data] synth_val must be >= 0, got {d.synth_val}")
    if t.lr_min < 0:
        raise UserError(f"[train] lr_min must be >= 0, got {t.lr_min}")
    if not 0 <= t.min_foreground < 1:
        raise UserError(f"[train] min_foreground must lie in [0, 1), got {t.min_foreground}")
    if not 0 <= n.p_low < n.p_high <= 100:
        raise UserError(f"[normalize] need 0 <= p_low < p_high <= 100, got {n.p_low}, "
                         f"{n.p_high}")
    try:
        cfg.assembly_params()
    except (ValueError, TypeError) as err:
        raise UserError(f"[postprocess] {err}") from None


def _postprocess(raw: Any) -> dict:
    if not isinstance(raw, Mapping):
        raise UserError(f"[postprocess] must be a table, got {_type_name(raw)}")
    hints = typing.get_type_hints(AssemblyParams)
    out = {}
    for key, value in raw.items():
        if key in ("patchshape", "overlapping"):
            raise UserError(f"[postprocess]: {key!r} is taken from "
                             f"{'[model] patchshape' if key == 'patchshape' else '[data] overlapping'}")
        if key not in _ASSEMBLY_KEYS:
            raise UserError(f"[postprocess]: unknown key {key!r} "
                             f"(known: {', '.join(sorted(_ASSEMBLY_KEYS))})")
        hint = hints[key]
        where = f"[postprocess] {key}"
        if get_origin(hint) is tuple and get_args(hint)[-1] is not Ellipsis:  # (t1, t2)
            if not isinstance(value, (list, tuple)) or len(value) != len(get_args(hint)):
                raise UserError(f"{where} must be an array of {len(get_args(hint))} numbers, "
                                 f"got {value!r}")
            value = [_convert(where, v, a) for v, a in zip(value, get_args(hint))]
        else:
            value = _convert(where, value, hint)
        out[key] = value
    return out


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Validate a nested mapping (as read from TOML) into a :class:`Config`.

    Raises
    ------
    ValueError
        One line naming the section and key of the first problem found.
    """
    if not isinstance(d, Mapping):
        raise UserError(f"a configuration must be a table, got {_type_name(d)}")
    known = list(_SECTIONS) + ["postprocess"]
    for key in d:
        if key not in known:
            raise UserError(f"unknown section [{key}] (known: {', '.join(known)})")
    sections = {name: _section(name, cls, d.get(name, {})) for name, cls in _SECTIONS.items()}
    cfg = Config(**sections, postprocess=_postprocess(d.get("postprocess", {})))
    _validate_config(cfg)
    return cfg


def parse_config(text: str) -> Config:
    """Parse and validate TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"invalid TOML: {err}") from None
    return config_from_dict(raw)


def load_config(path: str | os.PathLike, preset: str | None = None) -> Config:
    """Read and validate a TOML configuration file; errors name the file.

    With ``preset``, the file holds overrides: its keys replace the preset's, section by
    section, and keys it does not mention keep the preset's values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text (TOML) file") from None
    if preset is not None:
        raw = merge_config_dicts(load_preset(preset).to_dict(), raw)
    try:
        return config_from_dict(raw)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None


def merge_config_dicts(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """``base`` with the sections of ``override`` merged in key by key (tables recursively).

    Examples
    --------
    >>> merge_config_dicts({"train": {"lr": 1e-4, "seed": 0}}, {"train": {"seed": 3}})
    {'train': {'lr': 0.0001, 'seed': 3}}
    """
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config_dicts(out[key], value)
        else:
            out[key] = value
    return out


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    files = importlib.resources.files("ppp_zoo") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> Config:
    """Load a shipped preset by name, e.g. ``"nuclei2d-cpu"``.

    Examples
    --------
    >>> load_preset("nuclei2d-cpu").data.source
    'dsb-sample'
    """
    names = preset_names()
    if name not in names:
        raise UserError(f"unknown preset {name!r} (available: {', '.join(names)})")
    text = (importlib.resources.files("ppp_zoo") / "presets" / f"{name}.toml").read_text(
        encoding="utf-8")
    try:
        return parse_config(text)
    except ValueError as err:  # pragma: no cover - shipped presets are tested
        raise UserError(f"preset {name!r}: {err}") from None
