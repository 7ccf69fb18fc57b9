"""Synthetic training data: touching nuclei and overlapping worms.

Two generators whose images look enough like the real benchmarks to exercise a full
PatchPerPix pipeline without downloads:

* :func:`synth_nuclei` draws ellipses (2D) or ellipsoids (3D) of random size and orientation,
  many of them in touching clusters, and returns a label image (no overlaps).
* :func:`synth_worms` draws BBBC010-like C. elegans: long, thin, tapered worms, several of
  them crossing, and returns one binary mask per worm (masks overlap where worms cross).

Worm postures come from the Gaussian mixture over real C. elegans centreline angles that
ships with the ``wormpose`` package (``resources/postures_model.json.gz``, read by path; the
package itself is never imported). Without it a plain generator of smooth random postures
is used; :func:`posture_source` says which one is active.

Both generators render intensities with blur, an uneven background and Poisson noise, and
are deterministic for a given seed.

The code lives by job: this module holds the worm generator (postures, bodies, placement)
and re-exports the others, which live in ``_synth_nuclei.py`` (:func:`synth_nuclei`),
``_synth_fluorescence.py`` (:func:`synth_fluorescence_nuclei`) and ``_synth_common.py``
(argument checks, rendering, seeds, writing).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import json
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

from ..errors import SetupError, UserError
from ._synth_common import (
    Seed,
    _seeds,
    _validate_count,
    _validate_range,
    _validate_rendering,
    _validate_shape,
    _write_pairs,
)
from ._synth_fluorescence import (
    NucleiInfo,
    synth_fluorescence_nuclei,
    synth_fluorescence_nuclei_dataset,
)
from ._synth_nuclei import synth_nuclei, synth_nuclei_dataset, write_synth_nuclei
from ._synth_worm_render import RENDERINGS, render_worms

PostureSource = Literal["wormpose", "plain"]

__all__ = [
    "PostureSource",
    "NucleiInfo",
    "posture_source",
    "synth_fluorescence_nuclei",
    "synth_fluorescence_nuclei_dataset",
    "synth_nuclei",
    "synth_nuclei_dataset",
    "synth_worms",
    "synth_worms_dataset",
    "write_synth_nuclei",
    "write_synth_worms",
]

_N_ANGLES = 100  # posture length of the wormpose mixture and of the plain generator


# --------------------------------------------------------------------------- worm postures


def _posture_model_path() -> Path | None:
    """Path of wormpose's posture mixture file, found without importing wormpose."""
    try:
        spec = importlib.util.find_spec("wormpose")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        path = Path(location) / "resources" / "postures_model.json.gz"
        if path.is_file():
            return path
    return None


def posture_source() -> PostureSource:
    """Which posture generator :func:`synth_worms` uses with ``posture="auto"``.

    Returns
    -------
    source : {"wormpose", "plain"}
        ``"wormpose"`` when the ``wormpose`` package's posture mixture file is installed,
        else ``"plain"`` (smooth random postures).
    """
    return "wormpose" if _posture_model_path() is not None else "plain"


@dataclasses.dataclass(frozen=True)
class _PostureMixture:
    """Gaussian mixture over centreline angle vectors (means (K, T), factors (K, T, T))."""

    means: np.ndarray
    factors: np.ndarray  # lower Cholesky factors of the covariances
    weights: np.ndarray

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        k = rng.choice(len(self.weights), p=self.weights)
        return self.means[k] + self.factors[k] @ rng.standard_normal(self.means.shape[1])


@functools.lru_cache(maxsize=2)
def _load_posture_mixture(path: str) -> _PostureMixture:
    try:
        with gzip.open(path, "rt") as fh:
            data = json.load(fh)
        means = np.asarray(data["means"], np.float64)
        covariances = np.asarray(data["covariances"], np.float64)
        weights = np.asarray(data["weights"], np.float64)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: cannot read the posture mixture ({err})") from None
    k, t = means.shape if means.ndim == 2 else (0, 0)
    if k == 0 or covariances.shape != (k, t, t) or weights.shape != (k,):
        raise UserError(
            f"{path}: expected means (K, T), covariances (K, T, T), weights (K,), got "
            f"{means.shape}, {covariances.shape}, {weights.shape}"
        )
    try:
        factors = np.linalg.cholesky(covariances)
    except np.linalg.LinAlgError:  # not positive definite: symmetric square root instead
        values, vectors = np.linalg.eigh(covariances)
        factors = vectors * np.sqrt(np.clip(values, 0, None))[:, None, :]
    return _PostureMixture(means, factors, weights / weights.sum())


def _plain_posture(rng: np.random.Generator, n: int = _N_ANGLES) -> np.ndarray:
    """Smooth random centreline angles: a travelling-wave bend, a global curve and wiggles."""
    s = np.linspace(0.0, 1.0, n)
    phase = 2 * np.pi * rng.uniform(0.4, 1.4) * s + rng.uniform(0, 2 * np.pi)
    wave = rng.uniform(0.2, 1.1) * np.sin(phase)
    curve = rng.uniform(-2.0, 2.0) * s
    wiggle = ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=8, mode="nearest") * 2.0
    theta = wave + curve + wiggle
    return theta - theta.mean()


# --------------------------------------------------------------------------- worms


@dataclasses.dataclass(frozen=True)
class _WormShape:
    """Parameters of one worm's body (lengths in pixels)."""

    length: float
    radius: float  # mid-body radius
    tip_radius: float


def _centreline(theta: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Points (P, 2) in (y, x) about 0.5 px apart along the centreline, centred on 0."""
    n_points = int(np.ceil(length / 0.5)) + 1
    s = np.linspace(0.0, 1.0, n_points - 1)
    fine = np.interp(s, np.linspace(0.0, 1.0, len(theta)), theta) + angle
    step = length / (n_points - 1)
    steps = step * np.stack([np.sin(fine), np.cos(fine)], axis=1)
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return points - 0.5 * (points.min(axis=0) + points.max(axis=0))


def _body_radius(n_points: int, body: _WormShape) -> np.ndarray:
    """Tapered radius along the body: a short rounded head taper and a long pointed tail."""
    s = np.linspace(0.0, 1.0, n_points)
    head = np.clip(s / 0.12, 0.0, 1.0) ** 0.5
    tail = np.clip((1.0 - s) / 0.35, 0.0, 1.0) ** 0.8
    return body.tip_radius + (body.radius - body.tip_radius) * np.minimum(head, tail)


def _stamp_worm(points: np.ndarray, radii: np.ndarray, shape: tuple[int, int]):
    """Union of disks of ``radii`` at ``points`` on a canvas of ``shape``.

    Returns ``(window, mask, depth)``: the canvas window holding the worm, its mask there, and
    ``depth`` = 1 on the centreline falling to 0 at the rim; or ``(None, None, None)`` when
    the worm is entirely outside the canvas.
    """
    pad = int(np.ceil(radii.max())) + 2
    lo = np.floor(points.min(axis=0)).astype(int) - pad
    hi = np.ceil(points.max(axis=0)).astype(int) + pad + 1
    box = tuple(hi - lo)
    idx = np.round(points - lo).astype(int)
    not_centre = np.ones(box, bool)
    not_centre[idx[:, 0], idx[:, 1]] = False
    radius_at = np.zeros(box, np.float32)
    np.maximum.at(radius_at, (idx[:, 0], idx[:, 1]), radii.astype(np.float32))
    dist, nearest = ndimage.distance_transform_edt(not_centre, return_indices=True)
    radius = radius_at[nearest[0], nearest[1]]
    mask = dist <= radius
    depth = np.where(mask, 1.0 - dist / np.maximum(radius, 1e-6), 0.0).astype(np.float32)
    c_lo = np.maximum(lo, 0)
    c_hi = np.minimum(hi, shape)
    if np.any(c_hi <= c_lo):
        return None, None, None
    crop = tuple(slice(a - b, c - b) for a, c, b in zip(c_lo, c_hi, lo))
    window = tuple(slice(a, c) for a, c in zip(c_lo, c_hi))
    return window, mask[crop], depth[crop]


def _offset_for(
    rng: np.random.Generator,
    points: np.ndarray,
    shape: tuple[int, int],
    placed: list[np.ndarray],
    cross_fraction: float,
) -> np.ndarray:
    """Translation for a centred centreline: across an earlier worm, or anywhere inside."""
    if placed and rng.random() < cross_fraction:
        other = placed[rng.integers(len(placed))]
        target = other[rng.integers(len(other) // 5, 4 * len(other) // 5)]
        own = points[rng.integers(len(points) // 4, 3 * len(points) // 4)]
        return target - own
    margin = 5.0
    lo = -points.min(axis=0) + margin
    hi = np.asarray(shape) - 1 - points.max(axis=0) - margin
    return np.where(lo < hi, rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi)), 0.5 * (lo + hi))


def synth_worms(
    shape: Sequence[int] = (520, 696),
    n_worms: int | tuple[int, int] = (5, 12),
    seed: Seed = 0,
    *,
    length: tuple[float, float] = (250.0, 350.0),
    width: tuple[float, float] = (10.0, 14.0),
    cross_fraction: float = 0.5,
    max_overlap: float = 0.15,
    min_inside: float = 0.9,
    min_area: int = 200,
    posture: Literal["auto", "wormpose", "plain"] = "auto",
    blur: float = 1.2,
    background: float = 0.15,
    photons: float = 80.0,
    rendering: Literal["fluorescence", "brightfield", "mixed"] = "fluorescence",
    debris: int | tuple[int, int] = 0,
    well_edge: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesise a BBBC010-like image of overlapping worms and one mask per worm.

    Each worm's centreline follows a posture of 100 tangent angles, sampled from wormpose's
    Gaussian mixture over real C. elegans postures (or from a plain smooth generator, see
    :func:`posture_source`), integrated to a random length and rotated at random. The body is
    a union of disks whose radius tapers from ``width / 2`` at mid-body to about one pixel at
    the head and tail. A fraction of the worms is placed so that it crosses an earlier worm;
    placements that leave more than ``1 - min_inside`` of the worm outside the canvas or
    cover an earlier worm too much are redrawn. Worms are brighter than the background and
    brighter still where they cross; the image is blurred, lies on an uneven background and
    carries Poisson noise. The brightfield rendering (BBBC010's transmitted-light channel)
    draws them darker than an uneven, vignetted bright field instead, with a granular gut and
    a bright halo, one image in five lighter than the field, and optionally a well edge and
    debris.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)`` of the image; BBBC010 is ``(520, 696)``.
    n_worms : int or (int, int)
        Worm count, or an inclusive range to draw it from. Fewer masks are returned when a
        worm cannot be placed or its mask ends up smaller than ``min_area``.
    seed : int or numpy.random.SeedSequence
        Seed; the output is a deterministic function of it (and of the posture source).
    length : (float, float)
        Range of the centreline length in pixels.
    width : (float, float)
        Range of the mid-body width (diameter) in pixels.
    cross_fraction : float
        Probability that a worm is placed across an earlier one.
    max_overlap : float
        Largest fraction of any worm's mask that may be shared with other worms (checked for
        the new worm and for every earlier one), so that worms cross rather than pile up.
    min_inside : float
        Smallest fraction of the centreline that must lie inside the canvas.
    min_area : int
        Masks with fewer pixels are dropped.
    posture : {"auto", "wormpose", "plain"}
        Posture generator; ``"auto"`` is :func:`posture_source`.
    blur : float
        Gaussian blur sigma in pixels (0: none).
    background : float
        Mean background level (worms are 0.55-0.9, crossings up to ~1).
    photons : float
        Photon count of intensity 1; lower means noisier.
    rendering : {"fluorescence", "brightfield", "mixed"}
        How the worms look; ``"mixed"`` draws one of the two per image (brightfield with
        probability 1/2). ``background`` applies to fluorescence; a brightfield image's field
        lies at 0.45-0.8.
    debris : int or (int, int)
        Unlabelled particles (specks, blobs, short fibres), or an inclusive range to draw
        their count from.
    well_edge : float
        Probability that a brightfield image shows the edge of its well (the region beyond
        it unlit, a dark rim along it).

    Returns
    -------
    image : ndarray of float32, shape (Y, X)
        The noisy image.
    masks : ndarray of bool, shape (N, Y, X)
        One mask per worm; masks overlap where worms cross.

    Raises
    ------
    ValueError
        On an invalid shape or parameter.
    RuntimeError
        If ``posture="wormpose"`` and the wormpose posture file is not installed.

    Examples
    --------
    >>> image, masks = synth_worms(seed=3, posture="plain")
    >>> image.shape, masks.dtype, masks.shape[1:]
    ((520, 696), dtype('bool'), (520, 696))
    """
    shape = _validate_shape(shape, (2,))
    n_lo, n_hi = _validate_count("n_worms", n_worms)
    len_lo, len_hi = _validate_range("length", length, 10.0)
    w_lo, w_hi = _validate_range("width", width, 2.0)
    fractions = {
        "cross_fraction": cross_fraction,
        "max_overlap": max_overlap,
        "min_inside": min_inside,
    }
    for name, value in fractions.items():
        if not 0 <= value <= 1:
            raise UserError(f"{name} must lie in [0, 1], got {value}")
    _validate_rendering(blur, photons)
    if rendering not in RENDERINGS:
        raise UserError(f"rendering must be one of {', '.join(RENDERINGS)}, got {rendering!r}")
    debris_lo, debris_hi = _validate_count("debris", debris)
    if not 0 <= well_edge <= 1:
        raise UserError(f"well_edge must lie in [0, 1], got {well_edge}")
    if posture not in ("auto", "wormpose", "plain"):
        raise UserError(f"posture must be 'auto', 'wormpose' or 'plain', got {posture!r}")
    source = posture_source() if posture == "auto" else posture
    mixture = None
    if source == "wormpose":
        path = _posture_model_path()
        if path is None:
            raise SetupError(
                "the worm posture model ships with the 'wormpose' package: "
                "pip install --no-deps wormpose"
            )
        mixture = _load_posture_mixture(str(path))

    rng = np.random.default_rng(seed)
    masks: list[np.ndarray] = []
    density = np.zeros(shape, np.float32)
    occupied = np.zeros(shape, bool)
    placed: list[np.ndarray] = []
    areas: list[int] = []
    overlapped: list[int] = []  # pixels of each worm lying under or over another worm
    for _ in range(int(rng.integers(n_lo, n_hi + 1))):
        for _attempt in range(30):
            theta = mixture.sample(rng) if mixture is not None else _plain_posture(rng)
            body = _WormShape(
                length=rng.uniform(len_lo, len_hi),
                radius=0.5 * rng.uniform(w_lo, w_hi),
                tip_radius=rng.uniform(0.8, 1.5),
            )
            points = _centreline(theta, body.length, rng.uniform(0, 2 * np.pi))
            points = points + _offset_for(rng, points, shape, placed, cross_fraction)
            inside = np.all((points >= 0) & (points <= np.asarray(shape) - 1), axis=1)
            if inside.mean() < min_inside:
                continue
            window, local, depth = _stamp_worm(points, _body_radius(len(points), body), shape)
            if window is None or local.sum() < min_area:
                continue
            if (local & occupied[window]).sum() > max_overlap * local.sum():
                continue
            # earlier worms must stay mostly free too: crossings, not pile-ups
            if any(
                (m[window] & local).sum() + shared > max_overlap * area
                for m, area, shared in zip(masks, areas, overlapped)
            ):
                continue
            for i, m in enumerate(masks):
                overlapped[i] += int((m[window] & local).sum())
            overlapped.append(int((local & occupied[window]).sum()))
            areas.append(int(local.sum()))
            mask = np.zeros(shape, bool)
            mask[window] = local
            masks.append(mask)
            occupied |= mask
            placed.append(points)
            density[window] += rng.uniform(0.55, 0.9) * (0.55 + 0.45 * np.sqrt(depth)) * local
            break
    if rendering == "mixed":
        rendering = "brightfield" if rng.random() < 0.5 else "fluorescence"
    n_debris = int(rng.integers(debris_lo, debris_hi + 1)) if debris_hi else 0
    image = render_worms(rng, density, rendering, blur=blur, background=background,
                         photons=photons, debris=n_debris, well_edge=well_edge)
    stack = np.stack(masks) if masks else np.zeros((0, *shape), bool)
    return image, stack


def synth_worms_dataset(
    n_images: int, seed: Seed = 0, **kwargs
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Generate ``n_images`` independent :func:`synth_worms` images.

    Image ``i`` uses the ``i``-th child of ``numpy.random.SeedSequence(seed)``. ``kwargs`` are
    passed to :func:`synth_worms`.

    Examples
    --------
    >>> data = synth_worms_dataset(2, seed=0, shape=(128, 128), length=(60, 80),
    ...                            width=(6, 8), posture="plain")
    >>> [img.shape for img, _ in data]
    [(128, 128), (128, 128)]
    """
    return [synth_worms(seed=s, **kwargs) for s in _seeds(n_images, seed)]


def write_synth_worms(
    out_dir: str | os.PathLike, n_images: int = 10, seed: Seed = 0, **kwargs
) -> list[tuple[Path, Path]]:
    """Write a synthetic worm data set as ``images/worms_000.tif`` and ``masks/worms_000.tif``.

    Images are float32; masks are ``(N, Y, X)`` uint8 stacks (one 0/1 plane per worm), the
    layout :class:`ppp_zoo.data.FolderDataset` reads with ``overlapping=True``. ``kwargs`` go
    to :func:`synth_worms`.

    Returns
    -------
    paths : list of (Path, Path)
        ``(image_path, mask_path)`` per image.
    """
    return _write_pairs(out_dir, "worms", synth_worms_dataset(n_images, seed, **kwargs))
