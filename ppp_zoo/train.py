"""Train a PatchPerPix network from a :class:`~ppp_zoo.config.Config`.

One iteration draws ``batch_size`` random crops (crops with less than ``min_foreground``
foreground are redrawn up to ``max_resample`` times), augments them (random flips along
every axis and, for square Y/X crops, a Y/X transpose - together all 90-degree rotations
and mirrors; intensity scale in [0.9, 1.1] and shift in [-0.1, 0.1]; rotation, elastic
deformation, zoom, gamma, blur and noise when the config enables them), computes the GT
numinst and patches of each crop with :func:`~ppp_zoo.data.instance_targets`, and takes an
Adam step on :func:`~ppp_zoo.model.total_loss`. Every ``val_every`` iterations (and at the
end) the network segments the validation images with the real instance assembly (fast
mode) and the avAP is recorded; ``best.pt`` keeps the best-scoring weights, ``last.pt`` the
latest (with optimiser and random state, so that ``resume=True`` continues the run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .config import FORMAT_VERSION, Config, config_from_dict
from .data import FolderDataset, dsb_split, instance_targets, load_dsb_sample
from .data.synth import (
    synth_fluorescence_nuclei_dataset,
    synth_nuclei_dataset,
    synth_worms_dataset,
)
from .errors import SetupError, UserError, describe
from .evaluate import evaluate_image
from .model import PatchPerPixNet, total_loss
from .postprocess import AssemblyParams, assemble
from .postprocess.labels import instance_sizes, instance_widths, median_object_diameter
from .predict import (
    Checkpoint,
    as_grayscale,
    load_segmenter,
    network_outputs,
    normalize_image,
)

Device = Literal["auto", "cpu", "cuda"]
Pair = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    ``best_avAP`` is ``None`` when no validation image exists; ``stopped_early`` is true when
    the time limit or a ``stop`` request ended the run before ``iterations``, ``cancelled``
    only for the latter.
    """

    out_dir: str
    last_checkpoint: str
    best_checkpoint: str
    iterations: int
    final_loss: float
    best_avAP: float | None
    best_iteration: int | None
    seconds: float
    stopped_early: bool
    history: dict
    notes: tuple[str, ...] = ()
    cancelled: bool = False

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        return d


# --------------------------------------------------------------------------- data
def _synth_kwargs(cfg: Config) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.data.synth.items()}


def load_training_data(cfg: Config) -> tuple[list[Pair], list[Pair]]:
    """``(train, val)`` lists of ``(normalised float32 image, labels or mask stack)``.

    The dsb-sample source uses the left half of the DSB crop only: its last ``val_strip``
    columns are the validation image, the columns before them the training image. The
    ``[data] synth_extra`` synthetic images come last in the training list, the
    ``synth_val`` ones last in the validation list.
    """
    d = cfg.data
    if d.source == "dsb-sample":
        image, labels = dsb_split(*load_dsb_sample())["train"]
        width = image.shape[1]
        if d.val_strip >= width - 16:
            raise UserError(f"[data] val_strip {d.val_strip} leaves too little of the "
                             f"{width}-column training half")
        cut = width - d.val_strip
        train = [(image[:, :cut], labels[:, :cut])]
        val = [(image[:, cut:], labels[:, cut:])] if d.val_strip else []
    else:
        if d.source == "synth-nuclei":
            pairs = synth_nuclei_dataset(d.n_images, seed=d.seed, shape=d.image_size,
                                         **_synth_kwargs(cfg))
        elif d.source == "synth-fluorescence-nuclei":
            pairs = synth_fluorescence_nuclei_dataset(d.n_images, seed=d.seed,
                                                      shape=d.image_size, **_synth_kwargs(cfg))
        elif d.source == "synth-worms":
            pairs = synth_worms_dataset(d.n_images, seed=d.seed, shape=d.image_size,
                                        **_synth_kwargs(cfg))
        else:
            folder = FolderDataset(d.path, overlapping=d.overlapping)
            pairs = [folder[i] for i in range(len(folder))]
        n_val = math.ceil(d.val_fraction * len(pairs)) if d.val_fraction > 0 else 0
        if n_val >= len(pairs):
            raise UserError(f"[data] val_fraction {d.val_fraction} leaves no training image "
                             f"out of {len(pairs)}")
        train, val = pairs[:len(pairs) - n_val], pairs[len(pairs) - n_val:]
    # [data] synth holds the extra images' generator arguments only when the source itself
    # is not synthetic; each list has a seed stream of its own
    extra_kwargs = _synth_kwargs(cfg) if d.source in ("dsb-sample", "folder") else {}
    if d.synth_extra:
        train = train + synth_fluorescence_nuclei_dataset(
            d.synth_extra, seed=np.random.SeedSequence([d.seed, 1]), shape=(256, 256),
            **extra_kwargs)
    if d.synth_val:
        val = val + synth_fluorescence_nuclei_dataset(
            d.synth_val, seed=np.random.SeedSequence([d.seed, 2]), shape=(256, 256),
            **extra_kwargs)
    ndim = cfg.ndim

    def prepare(pair: Pair) -> Pair:
        image = as_grayscale(pair[0], ndim)
        return normalize_image(image, cfg.normalize), np.asarray(pair[1])

    return [prepare(p) for p in train], [prepare(p) for p in val]


def size_measure(overlapping: bool) -> str:
    """How the training objects' size is measured: the width of overlapping (worm-like)
    instances, the equivalent diameter of others (see
    :func:`~ppp_zoo.postprocess.labels.median_object_size`)."""
    return "width" if overlapping else "diameter"


def object_diameter(pairs: list[Pair], overlapping: bool) -> float | None:
    """Median size of the instances in pixels, measured as :func:`size_measure` says:
    equivalent diameter (circle in 2D, sphere in 3D), or the width of overlapping ones."""
    if not pairs:
        return None
    measure = size_measure(overlapping)
    if measure == "width":
        widths = np.concatenate([instance_widths(np.asarray(t), True) for _, t in pairs])
        return round(float(np.median(widths)), 2) if len(widths) else None
    sizes = np.concatenate([instance_sizes(np.asarray(target), overlapping)
                            for _, target in pairs])
    diameter = median_object_diameter(sizes, pairs[0][0].ndim)
    return None if diameter is None else round(diameter, 2)


def _foreground(target: np.ndarray, overlapping: bool) -> np.ndarray:
    return target.any(axis=0) if overlapping else target > 0


def _pad_to(image: np.ndarray, target: np.ndarray, crop: tuple[int, ...],
            overlapping: bool) -> Pair:
    pad = [(0, max(0, c - s)) for c, s in zip(crop, image.shape)]
    if not any(p for _, p in pad):
        return image, target
    image = np.pad(image, pad, mode="constant", constant_values=float(image.min()))
    target = np.pad(target, ([(0, 0)] if overlapping else []) + pad)
    return image, target


def _overlap_pixels(target: np.ndarray) -> np.ndarray:
    """Coordinates ``(n, ndim)`` of the pixels covered by two or more masks of a stack."""
    return np.argwhere(target.sum(axis=0, dtype=np.int32) >= 2)


def elastic_displacement(shape: tuple[int, ...], spacing: int, jitter: float,
                         rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement field ``(ndim, *shape)`` in pixels.

    Normal displacements with standard deviation ``jitter`` on a control grid of spacing
    ``spacing``, interpolated (cubic) to every pixel.
    """
    from scipy.ndimage import zoom

    grid = tuple(max(2, math.ceil(s / spacing) + 1) for s in shape)
    field = rng.normal(0.0, jitter, size=(len(shape),) + grid)
    factors = [s / g for s, g in zip(shape, grid)]
    return np.stack([zoom(f, factors, order=3, mode="nearest", grid_mode=True)[
        tuple(slice(0, s) for s in shape)] for f in field])


class CropSampler:
    """Random augmented training crops with their GT targets (deterministic given ``rng``).

    A crop is drawn at a random position (for overlapping data a fraction
    ``overlap_fraction`` of them centred on an overlap pixel), resampled through a random
    rotation and elastic displacement when these are enabled (image linear, labels
    nearest; outside the image counts as background), redrawn when it holds too little
    foreground, then mirrored/transposed and its intensities scaled and shifted.
    """

    def __init__(self, pairs: list[Pair], cfg: Config, rng: np.random.Generator):
        if not pairs:
            raise UserError("no training images")
        self.cfg = cfg
        self.rng = rng
        self.overlapping = cfg.data.overlapping
        self.crop = cfg.train.crop_size
        self.pairs = [_pad_to(img, tgt, self.crop, self.overlapping) for img, tgt in pairs]
        # intensity outside the image for warped crops: the image's background level
        self.background = [float(np.percentile(img, 1)) for img, _ in self.pairs]
        self.overlaps = ([_overlap_pixels(t) for _, t in self.pairs]
                         if self.overlapping and cfg.train.overlap_fraction > 0 else None)
        t = cfg.train
        self.warp = t.rotate > 0 or t.elastic_jitter > 0 or t.zoom > 1
        # crops are drawn per image with these probabilities: the [data] synth_extra images
        # (the last ones) share synth_extra_fraction of them
        n_extra = cfg.data.synth_extra
        n_own = len(self.pairs) - n_extra
        if n_extra and n_own > 0:
            share = cfg.data.synth_extra_fraction
            self.weights = np.array([(1 - share) / n_own] * n_own + [share / n_extra] * n_extra)
        else:
            self.weights = None

    def _centre(self, index: int) -> np.ndarray:
        img = self.pairs[index][0]
        if self.overlaps is not None and len(self.overlaps[index]) and \
                self.rng.random() < self.cfg.train.overlap_fraction:
            return self.overlaps[index][self.rng.integers(len(self.overlaps[index]))].astype(float)
        low = [c / 2 for c in self.crop]
        return np.array([self.rng.uniform(lo, s - lo) if s > 2 * lo else s / 2
                         for lo, s in zip(low, img.shape)])

    def _random_crop(self) -> Pair:
        index = (int(self.rng.integers(len(self.pairs))) if self.weights is None else
                 int(self.rng.choice(len(self.pairs), p=self.weights)))
        img, tgt = self.pairs[index]
        centre = self._centre(index)
        if not self.warp:
            start = [int(np.clip(round(c - k / 2), 0, s - k))
                     for c, k, s in zip(centre, self.crop, img.shape)]
            window = tuple(slice(a, a + k) for a, k in zip(start, self.crop))
            return img[window], tgt[((slice(None),) if self.overlapping else ()) + window]
        return self._warped_crop(img, tgt, centre, self.background[index])

    def _warped_crop(self, img: np.ndarray, tgt: np.ndarray, centre: np.ndarray,
                     background: float) -> Pair:
        from scipy.ndimage import gaussian_filter, map_coordinates

        t = self.cfg.train
        grid = np.indices(self.crop, dtype=np.float64)
        grid -= np.array([(k - 1) / 2 for k in self.crop]).reshape((-1,) + (1,) * len(self.crop))
        if t.rotate > 0:
            angle = math.radians(self.rng.uniform(-t.rotate, t.rotate))
            c, s = math.cos(angle), math.sin(angle)
            y, x = grid[-2].copy(), grid[-1].copy()
            grid[-2], grid[-1] = c * y - s * x, s * y + c * x
        if t.elastic_jitter > 0:
            grid += elastic_displacement(self.crop, t.elastic_spacing, t.elastic_jitter, self.rng)
        factor = 1.0
        if t.zoom > 1 and self.rng.random() < 0.5:
            factor = math.exp(self.rng.uniform(-math.log(t.zoom), math.log(t.zoom)))
            grid /= factor  # objects appear `factor` times larger
        grid += centre.reshape((-1,) + (1,) * len(self.crop))
        if factor < 1:  # shrinking: low-pass the source region first (no aliasing)
            sigma = 0.5 * (1 / factor - 1)
            margin = int(math.ceil(3 * sigma)) + 2
            lo = [max(0, int(math.floor(g.min())) - margin) for g in grid]
            hi = [min(s, int(math.ceil(g.max())) + margin + 1) for g, s in zip(grid, img.shape)]
            if all(h > lo_ for lo_, h in zip(lo, hi)):
                window = tuple(slice(a, b) for a, b in zip(lo, hi))
                src = gaussian_filter(img[window].astype(np.float32), sigma, mode="nearest")
                local = grid - np.array(lo, float).reshape((-1,) + (1,) * len(self.crop))
                out_img = map_coordinates(src, local, order=1, mode="constant",
                                          cval=background).astype(np.float32)
            else:  # the whole crop lies outside the image
                out_img = np.full(self.crop, background, np.float32)
        else:
            out_img = map_coordinates(img, grid, order=1, mode="constant",
                                      cval=background).astype(np.float32)
        if self.overlapping:
            out_tgt = np.stack([map_coordinates(m.astype(np.uint8), grid, order=0,
                                                mode="constant", cval=0) for m in tgt]) > 0
            out_tgt = out_tgt[out_tgt.reshape(len(out_tgt), -1).any(axis=1)] \
                if out_tgt.any() else out_tgt[:0]
        else:
            out_tgt = map_coordinates(tgt, grid, order=0, mode="constant", cval=0)
        return out_img, out_tgt

    def _crop_with_foreground(self) -> Pair:
        t = self.cfg.train
        for _ in range(t.max_resample):
            img, tgt = self._random_crop()
            if _foreground(tgt, self.overlapping).mean() >= t.min_foreground:
                break
        return img, tgt

    def _augment(self, img: np.ndarray, tgt: np.ndarray) -> Pair:
        off = 1 if self.overlapping else 0
        for axis in range(img.ndim):
            if self.rng.random() < 0.5:
                img, tgt = np.flip(img, axis), np.flip(tgt, axis + off)
        if img.shape[-1] == img.shape[-2] and self.rng.random() < 0.5:
            img, tgt = np.swapaxes(img, -1, -2), np.swapaxes(tgt, -1, -2)
        if self.cfg.train.edge_cut > 0 and self.rng.random() < self.cfg.train.edge_cut:
            img, tgt = self._cut_edge(img, tgt)
        img = self._appearance(img)
        scale, shift = self.rng.uniform(0.9, 1.1), self.rng.uniform(-0.1, 0.1)
        return (img * scale + shift).astype(np.float32), np.ascontiguousarray(tgt)

    def _cut_edge(self, img: np.ndarray, tgt: np.ndarray) -> Pair:
        """A band along one random Y/X side becomes flat background (the crop's 1st
        percentile) without instances: objects cut by a straight edge next to nothing."""
        off = 1 if self.overlapping else 0
        axis = img.ndim - 1 - int(self.rng.integers(2))  # y or x
        size = img.shape[axis]
        depth = int(self.rng.integers(max(1, size // 8), max(2, size // 3) + 1))
        band = [slice(None)] * img.ndim
        band[axis] = slice(0, depth) if self.rng.random() < 0.5 else slice(size - depth, size)
        img, tgt = img.copy(), tgt.copy()
        img[tuple(band)] = np.percentile(img, 1)
        tgt[(slice(None),) * off + tuple(band)] = 0
        return img, tgt

    def _appearance(self, img: np.ndarray) -> np.ndarray:
        """Gamma, blur and noise, each on a random half of the crops (when enabled)."""
        from scipy.ndimage import gaussian_filter

        t = self.cfg.train
        if t.gamma > 1 and self.rng.random() < 0.5:
            g = math.exp(self.rng.uniform(-math.log(t.gamma), math.log(t.gamma)))
            img = np.sign(img) * np.abs(img) ** g
        if t.blur > 0 and self.rng.random() < 0.5:
            img = gaussian_filter(img, self.rng.uniform(0, t.blur))
        if t.noise > 0 and self.rng.random() < 0.5:
            img = img + self.rng.normal(0, self.rng.uniform(0, t.noise), size=img.shape)
        return img

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One ``(image (1, ...), numinst (3, ...), patches (P, ...))`` training example."""
        img, tgt = self._augment(*self._crop_with_foreground())
        if self.overlapping and len(tgt) == 0:
            tgt = np.zeros((1,) + img.shape, dtype=bool)
        numinst, patches = instance_targets(tgt, self.cfg.model.patchshape,
                                            overlapping=self.overlapping)
        return np.ascontiguousarray(img)[None], numinst, patches

    def batch(self, device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        samples = [self.sample() for _ in range(self.cfg.train.batch_size)]
        x, ni, pa = (torch.from_numpy(np.stack(s)).to(device) for s in zip(*samples))
        return x, (ni, pa)


# --------------------------------------------------------------------------- helpers
def resolve_torch_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def model_kwargs(cfg: Config) -> dict:
    """Constructor arguments of :class:`~ppp_zoo.model.PatchPerPixNet` for ``cfg``."""
    m = cfg.model
    kwargs = {"ndim": cfg.ndim, "in_channels": 1, "patchshape": list(m.patchshape),
              "variant": m.variant, "base_features": m.base_features, "depth": m.depth,
              "growth": m.growth}
    if m.code_shape is not None:
        kwargs["code_shape"] = list(m.code_shape)
    if m.decoder_features is not None:
        kwargs["decoder_features"] = list(m.decoder_features)
    return kwargs


def validate(model: PatchPerPixNet, cfg: Config, val: list[Pair],
             device: torch.device) -> dict | None:
    """avAP of the fast-mode assembly on the validation images (``None`` without any)."""
    if not val:
        return None
    seg = load_segmenter(Checkpoint(model=model, normalize=cfg.normalize,
                                     assembly=cfg.assembly_params(fast=True), config={},
                                     device=device))
    per_image = []
    for image, target in val:  # the images are normalised already
        numinst, values = network_outputs(seg, image, normalized=True)
        pred = seg.assemble(numinst, values)
        per_image.append(_score(pred, target, cfg.data.overlapping))
    keys = ("avAP", "ap50", "ap90")
    scores = {k: float(np.mean([s[k] for s in per_image])) for k in keys}
    scores.update(n_pred=sum(s["n_pred"] for s in per_image),
                  n_gt=sum(s["n_gt"] for s in per_image))
    return scores


TUNE_GRID = {"patch_threshold": (0.5, 0.6, 0.7, 0.8, 0.9),
             "fc_threshold": (0.5, 0.7, 0.9),
             "numinst_t1": (0.5, 0.7, 0.9)}


TUNE_TOLERANCE = 0.01
"""Settings within this validation avAP of the best count as equally good."""


def tune_thresholds(model: PatchPerPixNet, cfg: Config, val: list[Pair],
                    device: torch.device, grid: dict = TUNE_GRID,
                    tolerance: float = TUNE_TOLERANCE) -> tuple[dict, dict]:
    """The assembly thresholds in ``grid`` with the best validation avAP (fast mode).

    Among the settings within ``tolerance`` of the best avAP, the one that selects the
    fewest patches in the foreground cover is taken: the exact assembly's cost grows with
    the square of that number (a soft, briefly trained network with a high ``fc_threshold``
    selects thousands of patches). Returns ``(changes, scores)``: the
    :class:`~ppp_zoo.postprocess.AssemblyParams` fields to replace and the validation scores
    they reach (plus ``n_selected``). The network runs once per image.
    """
    seg = load_segmenter(Checkpoint(model=model, normalize=cfg.normalize,
                                     assembly=cfg.assembly_params(fast=True), config={},
                                     device=device))
    outputs = []  # what the exported package computes: numinst and the decoded patches
    for image, _ in val:
        numinst, values = network_outputs(seg, image, normalized=True)
        outputs.append((numinst, seg.params.patches(numinst, values)))
    base = cfg.assembly_params(fast=True)
    t2 = base.numinst_thresholds[1]
    candidates = [{}] + [
        {"patch_threshold": th, "fc_threshold": fc, "numinst_thresholds": (t1, t2)}
        for th in grid["patch_threshold"] for fc in grid["fc_threshold"]
        for t1 in grid["numinst_t1"]]
    results = []
    for changes in candidates:
        params = base.replace(**changes)
        per_image, n_selected = [], 0
        for (ni, pa), (_, target) in zip(outputs, val):
            res = assemble(ni, pa, params, return_result=True)
            per_image.append(_score(res.labels, target, cfg.data.overlapping))
            n_selected += res.n_selected
        scores = {k: float(np.mean([r[k] for r in per_image])) for k in ("avAP", "ap50", "ap90")}
        results.append((changes, {**scores, "n_selected": n_selected}))
    top = max(s["avAP"] for _, s in results)
    near = [(c, s) for c, s in results if s["avAP"] >= top - tolerance]
    return min(near, key=lambda cs: cs[1]["n_selected"])  # first of equals: stable


def _score(pred: np.ndarray, target: np.ndarray, overlapping: bool) -> dict:
    """avAP, AP@0.5 and AP@0.9 of one image."""
    r = evaluate_image(pred, target, overlapping=overlapping)
    return {"avAP": r.avAP, "ap50": r.ap["0.5"], "ap90": r.ap["0.9"], "n_pred": r.n_pred,
            "n_gt": r.n_gt}


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _plot_curve(out_dir: Path, history: dict) -> str | None:
    """Write ``curve.png``; returns a note when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: curve.png not written"
    fig, ax = plt.subplots(figsize=(7, 4))
    if history["loss"]:
        its, losses = zip(*history["loss"])
        ax.plot(its, losses, lw=0.8, label="loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if history["val"]:
        ax2 = ax.twinx()
        ax2.plot([v["iteration"] for v in history["val"]], [v["avAP"] for v in history["val"]],
                 "o-", color="tab:red", label="val avAP")
        ax2.set_ylabel("val avAP")
        ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out_dir / "curve.png", dpi=100)
    plt.close(fig)
    return None


class _Progress:
    """A rich progress bar showing the loss (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"),
                                TextColumn("val avAP {task.fields[val]}"),
                                TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=done, loss="-",
                                          val="-")

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, **fields: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1 if "loss" in fields else 0, **fields)


# --------------------------------------------------------------------------- training
def train(config: Config | dict, out_dir: str | os.PathLike, *, max_minutes: float | None = None,
          device: Device = "auto", resume: bool = False, progress: bool = True,
          snapshot_minutes: float | None = None,
          callback: Callable[[dict], None] | None = None,
          stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train a PatchPerPix network and write checkpoints, ``metrics.json`` and ``curve.png``.

    Parameters
    ----------
    config : Config or dict
        Training configuration (a dict is validated first).
    out_dir : path-like
        Output folder (created).
    max_minutes : float, optional
        Wall-clock limit; overrides ``[train] max_minutes``. Training stops after the
        iteration that crosses it, then validates and saves.
    device : {"auto", "cpu", "cuda"}
        Mixed precision (float16 autocast) is used on CUDA only.
    resume : bool
        Continue from ``out_dir/last.pt`` (same ``[model]`` section required).
    progress : bool
        Show a rich progress bar.
    snapshot_minutes : float, optional
        Also save the weights every this many minutes of training as
        ``out_dir/snapshots/minute_MMM.M.pt`` (for curves of quality versus training time).
    callback : callable, optional
        Called (in the training thread) after every iteration with ``{"iteration",
        "iterations", "loss"}`` and after every validation with ``{"iteration", "val"}``
        (the validation scores), e.g. to draw live curves.
    stop : callable, optional
        Asked before every iteration; when it returns true, training ends as at the time
        limit (final validation, ``best.pt``, ``last.pt`` and ``metrics.json`` written) but
        without threshold tuning, and the result has ``cancelled=True``.

    Returns
    -------
    TrainResult
    """
    cfg = config if isinstance(config, Config) else config_from_dict(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_torch_device(device)
    t_cfg = cfg.train
    limit = max_minutes if max_minutes is not None else t_cfg.max_minutes
    if limit is not None and limit <= 0:
        raise UserError(f"max_minutes must be > 0, got {limit}")

    torch.manual_seed(t_cfg.seed)
    rng = np.random.default_rng(t_cfg.seed)
    loss_gen = torch.Generator().manual_seed(t_cfg.seed)
    kwargs = model_kwargs(cfg)
    model = PatchPerPixNet(**kwargs).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=t_cfg.lr, betas=(t_cfg.beta1, 0.999))
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: dict = {"loss": [], "val": []}
    start_it, best = 0, None
    if resume:
        start_it, best, history = _restore(out / "last.pt", cfg, model, opt, rng, loss_gen)

    train_pairs, val_pairs = load_training_data(cfg)
    sampler = CropSampler(train_pairs, cfg, rng)
    assembly = cfg.assembly_params()
    own_pairs = train_pairs[:len(train_pairs) - cfg.data.synth_extra]
    training_info = {"object_diameter": object_diameter(own_pairs, cfg.data.overlapping),
                     "object_size": size_measure(cfg.data.overlapping),
                     "source": cfg.data.source, "n_train_images": len(train_pairs),
                     "n_val_images": len(val_pairs)}

    def payload(it: int) -> dict:
        return {"format_version": FORMAT_VERSION,
                "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "model_kwargs": kwargs, "config": cfg.to_dict(),
                "normalize": dataclasses.asdict(cfg.normalize),
                "assembly": assembly.to_dict(), "iteration": it, "history": history,
                "best": best, "training": training_info}

    def run_validation(it: int) -> None:
        nonlocal best
        scores = validate(model, cfg, val_pairs, dev)
        if scores is not None:
            history["val"].append({"iteration": it, **scores})
            bar.update(val=f"{scores['avAP']:.3f}")
            if callback is not None:
                callback({"iteration": it, "val": scores})
        if scores is None or best is None or scores["avAP"] > best["avAP"]:
            best = {"iteration": it, "avAP": None if scores is None else scores["avAP"]}
            _save(out / "best.pt", payload(it))

    t0 = time.perf_counter()
    it, stopped_early, cancelled, snapshots = start_it, False, False, []
    model.train()
    with _Progress(progress, t_cfg.iterations, start_it) as bar:
        while it < t_cfg.iterations:
            if limit is not None and time.perf_counter() - t0 > 60.0 * limit:
                stopped_early = True
                break
            if stop is not None and stop():
                stopped_early = cancelled = True
                break
            if t_cfg.lr_schedule == "cosine":
                done = it / t_cfg.iterations
                if limit is not None:
                    done = max(done, (time.perf_counter() - t0) / (60.0 * limit))
                lr = t_cfg.lr_min + 0.5 * (t_cfg.lr - t_cfg.lr_min) * (
                    1.0 + math.cos(math.pi * min(done, 1.0)))
                for group in opt.param_groups:
                    group["lr"] = lr
            x, targets = sampler.batch(dev)
            sampled = t_cfg.patch_samples > 0  # the patch head at sampled pixels only
            with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
                outputs = model.features(x) if sampled else model(x)
            outputs = tuple(o.float() for o in outputs)
            loss, _ = total_loss(outputs, targets, cfg.model.variant, decoder=model.decoder,
                                 max_samples=t_cfg.patch_samples if sampled else t_cfg.decode_samples,
                                 generator=loss_gen, fg_weight=t_cfg.patch_fg_weight,
                                 head=model.patch_head if sampled else None)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            it += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise SetupError(f"loss is {value} at iteration {it}: lower [train] lr")
            history["loss"].append([it, value])
            if snapshot_minutes and time.perf_counter() - t0 >= 60.0 * snapshot_minutes * (
                    len(snapshots) + 1):
                snapshots.append(it)
                (out / "snapshots").mkdir(exist_ok=True)
                minutes = snapshot_minutes * len(snapshots)
                _save(out / "snapshots" / f"minute_{minutes:05.1f}.pt", payload(it))
            bar.update(loss=f"{value:.4f}")
            if callback is not None:
                callback({"iteration": it, "iterations": t_cfg.iterations, "loss": value})
            if it % t_cfg.val_every == 0 and it < t_cfg.iterations:
                run_validation(it)
                model.train()
        if not history["val"] or history["val"][-1]["iteration"] != it:
            run_validation(it)
    last = payload(it)
    last.update(optimizer_state=opt.state_dict(), rng_state=_rng_state(rng, loss_gen))
    _save(out / "last.pt", last)
    if t_cfg.tune_thresholds and val_pairs and not cancelled:
        history["tuned"] = _tune_best(out / "best.pt", cfg, val_pairs, dev)

    seconds = time.perf_counter() - t0
    notes = tuple(n for n in [_plot_curve(out, history)] if n)
    result = TrainResult(
        out_dir=str(out), last_checkpoint=str(out / "last.pt"),
        best_checkpoint=str(out / "best.pt"), iterations=it,
        final_loss=history["loss"][-1][1] if history["loss"] else float("nan"),
        best_avAP=None if best is None else best["avAP"],
        best_iteration=None if best is None else best["iteration"],
        seconds=round(seconds, 3), stopped_early=stopped_early, history=history, notes=notes,
        cancelled=cancelled)
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result


def _tune_best(path: Path, cfg: Config, val: list[Pair], device: torch.device) -> dict:
    """Tune the thresholds of the weights in ``best.pt`` and store them there."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = PatchPerPixNet(**ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    model.to(device).eval()
    changes, scores = tune_thresholds(model, cfg, val, device)
    assembly = AssemblyParams.from_dict(ckpt["assembly"]).replace(**changes)
    ckpt["assembly"] = assembly.to_dict()
    ckpt["tuned"] = {"changes": {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in changes.items()}, "val": scores}
    _save(path, ckpt)
    return ckpt["tuned"]


def _rng_state(rng: np.random.Generator, gen: torch.Generator) -> dict:
    return {"numpy": json.dumps(rng.bit_generator.state), "torch": torch.get_rng_state(),
            "loss": gen.get_state()}


def _restore(path: Path, cfg: Config, model, opt, rng, gen):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to resume from")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: not a readable checkpoint ({describe(err)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: not a format_version {FORMAT_VERSION} checkpoint")
    if ckpt["config"].get("model") != cfg.to_dict()["model"]:
        raise UserError(f"{path}: its [model] section differs from the configuration's; "
                         "cannot resume")
    model.load_state_dict(ckpt["model_state"])
    if "optimizer_state" in ckpt:
        opt.load_state_dict(ckpt["optimizer_state"])
    if "rng_state" in ckpt:
        rng.bit_generator.state = json.loads(ckpt["rng_state"]["numpy"])
        torch.set_rng_state(ckpt["rng_state"]["torch"])
        gen.set_state(ckpt["rng_state"]["loss"])
    return int(ckpt["iteration"]), ckpt.get("best"), ckpt["history"]
