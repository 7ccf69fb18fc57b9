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
from ..io import write_image, write_labels

PostureSource = Literal["wormpose", "plain"]
Seed = int | np.random.SeedSequence

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


# --------------------------------------------------------------------------- validation


def _validate_shape(shape: Sequence[int], ndims: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in ndims or any(s < 8 for s in shape):
        allowed = " or ".join(f"{n}D" for n in ndims)
        raise UserError(f"shape must be {allowed} with every side >= 8, got {shape}")
    return shape


def _validate_range(name: str, value, minimum: float) -> tuple[float, float]:
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if not minimum <= lo <= hi:
        raise UserError(
            f"{name} must be a number or a (low, high) pair >= {minimum}, got {value!r}"
        )
    return float(lo), float(hi)


def _validate_count(name: str, value) -> tuple[int, int]:
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if int(lo) != lo or int(hi) != hi or not 0 <= lo <= hi:
        raise UserError(f"{name} must be an int or an inclusive (low, high) pair, got {value!r}")
    return int(lo), int(hi)


def _validate_rendering(blur: float, photons: float) -> None:
    if blur < 0:
        raise UserError(f"blur must be >= 0, got {blur}")
    if photons <= 0:
        raise UserError(f"photons must be > 0, got {photons}")


# --------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, shape: tuple[int, ...], level: float) -> np.ndarray:
    """Smooth uneven background: a random low-frequency field plus a linear gradient."""
    from skimage.transform import resize

    coarse = rng.uniform(0.5, 1.5, size=tuple(max(2, s // 96 + 2) for s in shape))
    field = resize(coarse, shape, order=3, mode="edge", anti_aliasing=False)
    axes = np.meshgrid(*[np.linspace(-0.5, 0.5, s) for s in shape], indexing="ij", sparse=True)
    slope = rng.uniform(-0.6, 0.6, size=len(shape))
    gradient = 1.0 + sum(a * g for a, g in zip(slope, axes))
    return (level * np.clip(field * gradient, 0.2, None)).astype(np.float32)


def _render(
    rng: np.random.Generator,
    signal: np.ndarray,
    background: float,
    blur: float,
    photons: float,
) -> np.ndarray:
    """Blur ``signal``, add an uneven background and Poisson noise (mean kept at the signal)."""
    clean = signal.astype(np.float32)
    if blur > 0:
        clean = ndimage.gaussian_filter(clean, blur)
    clean = clean + _background(rng, signal.shape, background)
    counts = rng.poisson(np.clip(clean, 0, None) * photons)
    return (counts / photons).astype(np.float32)


def _smooth_texture(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, amount: float):
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    noise /= max(float(noise.std()), 1e-6)
    return 1.0 + amount * noise


def _seeds(n_images: int, seed: Seed) -> list[np.random.SeedSequence]:
    if int(n_images) != n_images or n_images < 0:
        raise UserError(f"n_images must be a non-negative int, got {n_images!r}")
    base = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return base.spawn(int(n_images))


# --------------------------------------------------------------------------- nuclei


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


def _ellipsoid(centre: np.ndarray, axes: np.ndarray, rotation: np.ndarray, shape):
    """Window of ``shape`` around an ellipsoid and its normalised radius squared there.

    Returns ``(window, r2)`` with ``r2 <= 1`` inside the ellipsoid, or ``(None, None)`` when
    the ellipsoid lies outside the canvas.
    """
    extent = float(axes.max())
    lo = np.maximum(np.floor(centre - extent).astype(int), 0)
    hi = np.minimum(np.ceil(centre + extent).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None, None
    grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    offsets = np.stack(grid).reshape(len(shape), -1) - centre[:, None]
    local = rotation.T @ offsets  # coordinates along the ellipsoid's own axes
    r2 = np.sum((local / axes[:, None]) ** 2, axis=0).reshape(hi - lo)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), r2


def synth_nuclei(
    shape: Sequence[int] = (256, 256),
    n_nuclei: int = 40,
    seed: Seed = 0,
    *,
    radius: tuple[float, float] = (5.0, 10.0),
    cluster_fraction: float = 0.6,
    min_size: int = 20,
    blur: float = 1.0,
    background: float = 0.1,
    photons: float = 60.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesise a fluorescence image of touching, clustered nuclei and its labels.

    Nuclei are ellipses (2D) or ellipsoids (3D) with random semi-axes and orientation.
    A fraction of them is placed right next to an earlier nucleus so that clusters of
    touching nuclei form. Labels never overlap: a pixel already claimed keeps its earlier
    label, and a nucleus that would lose more than 30 % of its pixels is redrawn. Intensity
    falls off slightly towards each rim (so touching nuclei show a faint valley), is
    blurred, lies on an uneven background and carries Poisson noise.

    Parameters
    ----------
    shape : sequence of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    n_nuclei : int
        Nuclei to place. Fewer are returned when the canvas is too crowded.
    seed : int or numpy.random.SeedSequence
        Seed; the output is a deterministic function of it.
    radius : (float, float)
        Range of the mean semi-axis length in pixels; each axis varies by up to ~30 %
        around it.
    cluster_fraction : float
        Probability that a nucleus is placed touching an earlier one.
    min_size : int
        A nucleus with fewer visible pixels is redrawn.
    blur : float
        Gaussian blur sigma in pixels (0: none).
    background : float
        Mean background level (nuclei are 0.6-1.0).
    photons : float
        Photon count of intensity 1; lower means noisier.

    Returns
    -------
    image : ndarray of float32, shape (Y, X) or (Z, Y, X)
        Noisy image, about 0.1 background and 1 in nuclei.
    labels : ndarray of int32, same shape
        Instance labels ``1..N`` (consecutive), 0 is background.

    Raises
    ------
    ValueError
        On an invalid shape, count or parameter range.

    Examples
    --------
    >>> image, labels = synth_nuclei((128, 128), n_nuclei=10, seed=1)
    >>> image.dtype, labels.dtype, labels.shape
    (dtype('float32'), dtype('int32'), (128, 128))
    >>> volume, labels3d = synth_nuclei((24, 64, 64), n_nuclei=8, radius=(4, 6))
    >>> labels3d.ndim
    3
    """
    shape = _validate_shape(shape, (2, 3))
    if isinstance(n_nuclei, bool) or int(n_nuclei) != n_nuclei or n_nuclei < 0:
        raise UserError(f"n_nuclei must be a non-negative int, got {n_nuclei!r}")
    r_lo, r_hi = _validate_range("radius", radius, 1.0)
    if not 0 <= cluster_fraction <= 1:
        raise UserError(f"cluster_fraction must lie in [0, 1], got {cluster_fraction}")
    _validate_rendering(blur, photons)

    rng = np.random.default_rng(seed)
    ndim = len(shape)
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    centres: list[np.ndarray] = []
    sizes: list[float] = []
    for _ in range(int(n_nuclei)):
        for _attempt in range(50):
            mean_radius = rng.uniform(r_lo, r_hi)
            axes = mean_radius * np.exp(rng.uniform(-0.3, 0.3, size=ndim))
            if centres and rng.random() < cluster_fraction:
                j = rng.integers(len(centres))
                direction = rng.standard_normal(ndim)
                direction /= np.linalg.norm(direction)
                distance = (sizes[j] + mean_radius) * rng.uniform(0.75, 0.95)
                centre = centres[j] + distance * direction
            else:
                centre = rng.uniform(0, shape)
            window, r2 = _ellipsoid(centre, axes, _random_rotation(rng, ndim), shape)
            if window is None:
                continue
            inside = r2 <= 1
            free = inside & (labels[window] == 0)
            n_free = int(free.sum())
            if n_free < min_size or n_free < 0.7 * inside.sum():
                continue
            centres.append(centre)
            sizes.append(mean_radius)
            labels[window][free] = len(centres)
            signal[window][free] = rng.uniform(0.6, 1.0) * (1.0 - 0.35 * r2[free])
            break
    signal *= _smooth_texture(rng, shape, sigma=1.5, amount=0.08)
    image = _render(rng, signal, background, blur, photons)
    return image, labels


def synth_nuclei_dataset(
    n_images: int, seed: Seed = 0, shape: Sequence[int] = (256, 256), **kwargs
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Generate ``n_images`` independent :func:`synth_nuclei` images.

    Image ``i`` uses the ``i``-th child of ``numpy.random.SeedSequence(seed)``, so the list
    is deterministic and its first images do not depend on ``n_images``. ``kwargs`` are
    passed to :func:`synth_nuclei`.

    Examples
    --------
    >>> data = synth_nuclei_dataset(2, seed=0, shape=(64, 64), n_nuclei=5)
    >>> len(data), data[0][0].shape
    (2, (64, 64))
    """
    return [synth_nuclei(shape, seed=s, **kwargs) for s in _seeds(n_images, seed)]


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
    carries Poisson noise.

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
    # overlaps are brighter but saturate: 1 - exp(-k d) is linear for one worm, sublinear beyond
    signal = (1.0 - np.exp(-1.2 * density)) / 1.2 * 1.3
    signal *= _smooth_texture(rng, shape, sigma=2.0, amount=0.1)
    image = _render(rng, signal, background, blur, photons)
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


# --------------------------------------------------------------------------- writers


def _write_pairs(out_dir, prefix: str, data) -> list[tuple[Path, Path]]:
    out_dir = Path(out_dir)
    paths = []
    for i, (image, target) in enumerate(data):
        name = f"{prefix}_{i:03d}.tif"
        paths.append(
            (
                write_image(out_dir / "images" / name, image.astype(np.float32)),
                write_labels(out_dir / "masks" / name, target),
            )
        )
    return paths


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


def write_synth_nuclei(
    out_dir: str | os.PathLike,
    n_images: int = 10,
    seed: Seed = 0,
    shape: Sequence[int] = (256, 256),
    **kwargs,
) -> list[tuple[Path, Path]]:
    """Write a synthetic nuclei data set as ``images/nuclei_000.tif`` and ``masks/nuclei_000.tif``.

    Images are float32; masks are label images (uint16). ``kwargs`` go to
    :func:`synth_nuclei`.

    Returns
    -------
    paths : list of (Path, Path)
        ``(image_path, mask_path)`` per image.
    """
    return _write_pairs(out_dir, "nuclei", synth_nuclei_dataset(n_images, seed, shape, **kwargs))


# --------------------------------------------------------------------------- realistic nuclei


@dataclasses.dataclass(frozen=True)
class NucleiInfo:
    """What :func:`synth_fluorescence_nuclei` drew: one entry per label ``1..N``.

    ``centres`` ``(N, 2)`` and ``diameters`` (equivalent diameter of the drawn shape, in
    pixels, before other nuclei took any of its pixels), ``areas`` (pixels the label holds),
    ``brightness`` (relative, mean 1 over the data set) and the image's settings: ``snr``
    (asked for), ``measured_snr`` (mean nucleus signal above background over the noise
    standard deviation inside the nuclei, measured against the noise-free image), ``blur``,
    ``diameter`` (the image's typical diameter), ``coverage`` (fraction of pixels in nuclei).
    """

    centres: np.ndarray
    diameters: np.ndarray
    areas: np.ndarray
    brightness: np.ndarray
    snr: float
    measured_snr: float
    blur: float
    diameter: float
    coverage: float


def _draw(rng: np.random.Generator, value, log: bool = False) -> float:
    lo, hi = (value, value) if np.isscalar(value) else value
    if log:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(rng.uniform(lo, hi))


def _irregular_blob(centre: np.ndarray, axes: np.ndarray, angle: float, harmonics: np.ndarray,
                    shape: tuple[int, int]):
    """Window and normalised radius squared of an ellipse whose outline is bent by a few
    low-order harmonics (``harmonics``: rows of (order, amplitude, phase))."""
    extent = float(axes.max()) * (1.0 + np.abs(harmonics[:, 1]).sum())
    lo = np.maximum(np.floor(centre - extent).astype(int), 0)
    hi = np.minimum(np.ceil(centre + extent).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None, None
    yy, xx = np.meshgrid(np.arange(lo[0], hi[0]) - centre[0], np.arange(lo[1], hi[1]) - centre[1],
                         indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * yy + s * xx) / axes[0], (-s * yy + c * xx) / axes[1]
    phi = np.arctan2(v, u)
    factor = 1.0 + sum(a * np.cos(k * phi + p) for k, a, p in harmonics)
    r2 = (u * u + v * v) / np.maximum(factor, 0.3) ** 2
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1])), r2


def _band_pass(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    noise = rng.standard_normal(shape).astype(np.float32)
    field = ndimage.gaussian_filter(noise, sigma) - ndimage.gaussian_filter(noise, 3 * sigma)
    return field / max(float(field.std()), 1e-6)


def synth_fluorescence_nuclei(
    shape: Sequence[int] = (256, 256),
    seed: Seed = 0,
    *,
    diameter: float | tuple[float, float] = (12.0, 48.0),
    coverage: float | tuple[float, float] = (0.1, 0.4),
    cluster_fraction: float | tuple[float, float] = (0.3, 0.8),
    snr: float | tuple[float, float] = (2.0, 30.0),
    blur: float | tuple[float, float] = (0.5, 2.0),
    texture: float | tuple[float, float] = (0.05, 0.35),
    irregularity: float = 0.06,
    brightness_spread: float = 0.35,
    return_info: bool = False,
):
    """Synthesise a 2D fluorescence nuclei image that resembles a real microscope's.

    Compared with :func:`synth_nuclei` (clean ellipses of one brightness), each image draws
    its own settings from the given ranges (a number fixes a setting), so that a data set
    covers many microscopes:

    * **size**: a typical diameter per image (log-uniform in ``diameter``; the default spans
      4x), each nucleus within +-20 % of it, elongated up to 1.5:1, its outline bent by
      harmonics of relative amplitude ``irregularity``;
    * **crowding**: nuclei are added until a ``coverage`` fraction of the image is covered,
      a ``cluster_fraction`` of them touching an earlier one; labels never overlap and each
      label is one connected region;
    * **intensity**: log-normal brightness per nucleus (``brightness_spread``), a flat top
      that falls off towards the rim, chromatin texture (band-pass noise of relative
      strength ``texture``) with a few bright and dark spots (chromocentres, nucleoli),
      out-of-focus haze around the nuclei;
    * **optics and camera**: Gaussian blur (sigma in ``blur``), an uneven background with a
      gradient (2-30 % of the nucleus level), Poisson noise plus Gaussian read noise at
      signal-to-noise ratio ``snr`` (log-uniform; the mean nucleus signal above background
      over the noise standard deviation inside the nuclei), then a random camera gain and
      offset.

    Statistics (``shape`` 256 x 256, defaults, the 64 images of
    ``synth_fluorescence_nuclei_dataset(64, seed=0)``): 6-177 nuclei per image, median
    36.5; the measured signal-to-noise ratio (``NucleiInfo.measured_snr``) is 0.98-1.02
    times the asked one; intensities are float32 camera units from -241 to 6669 (read
    noise takes some dim pixels below zero in 6 of the 64 images).

    Parameters
    ----------
    shape : (int, int)
        Image size ``(Y, X)``.
    seed : int or numpy.random.SeedSequence
        The output is a deterministic function of it.
    diameter, coverage, cluster_fraction, snr, blur, texture : float or (float, float)
        Per-image settings: a fixed value or the range a value is drawn from.
    irregularity : float
        Relative amplitude of the outline's 2nd-4th harmonics (0: ellipses).
    brightness_spread : float
        Standard deviation of the log brightness of the nuclei.
    return_info : bool
        Also return a :class:`NucleiInfo` describing what was drawn.

    Returns
    -------
    image : ndarray of float32, shape (Y, X)
    labels : ndarray of int32, shape (Y, X)
        Instance labels ``1..N`` (consecutive), 0 is background.
    info : NucleiInfo
        Only with ``return_info=True``.

    Examples
    --------
    >>> image, labels = synth_fluorescence_nuclei((128, 128), seed=3, diameter=16, snr=8)
    >>> image.dtype, bool(labels.max() > 5)
    (dtype('float32'), True)
    """
    shape = _validate_shape(shape, (2,))
    d_lo, d_hi = _validate_range("diameter", diameter, 3.0)
    _validate_range("coverage", coverage, 0.0)
    _validate_range("snr", snr, 0.1)
    _validate_range("blur", blur, 0.0)
    _validate_range("texture", texture, 0.0)
    c_lo, c_hi = _validate_range("cluster_fraction", cluster_fraction, 0.0)
    if c_hi > 1 or (np.isscalar(coverage) and coverage > 0.7) or \
            (not np.isscalar(coverage) and max(coverage) > 0.7):
        raise UserError("cluster_fraction must lie in [0, 1] and coverage in [0, 0.7]")
    if irregularity < 0 or brightness_spread < 0:
        raise UserError("irregularity and brightness_spread must be >= 0")

    rng = np.random.default_rng(seed)
    typical = _draw(rng, (d_lo, d_hi), log=True)
    target = _draw(rng, coverage)
    clustering = _draw(rng, cluster_fraction)
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    profile = np.zeros(shape, np.float32)
    centres, diameters, brightness = [], [], []
    covered, failures = 0, 0
    while covered < target * labels.size and failures < 200:
        d = float(np.clip(typical * np.exp(rng.uniform(-0.2, 0.2)), d_lo, d_hi))
        elongation = np.exp(rng.uniform(0, 0.4))
        axes = 0.5 * d * np.array([np.sqrt(elongation), 1 / np.sqrt(elongation)])
        harmonics = np.array([(k, rng.normal(0, irregularity / (k - 1)), rng.uniform(0, 2 * np.pi))
                              for k in (2, 3, 4)])
        if centres and rng.random() < clustering:
            j = int(rng.integers(len(centres)))
            step = rng.standard_normal(2)
            centre = centres[j] + 0.5 * (diameters[j] + d) * rng.uniform(0.8, 0.95) * \
                step / np.linalg.norm(step)
        else:
            centre = rng.uniform(0, shape)
        window, r2 = _irregular_blob(centre, axes, rng.uniform(0, np.pi), harmonics, shape)
        if window is None:
            failures += 1
            continue
        inside = r2 <= 1
        free = inside & (labels[window] == 0)
        n_free = int(free.sum())
        if n_free < max(12, 0.7 * inside.sum()) or ndimage.label(free)[1] != 1:
            failures += 1
            continue
        centres.append(centre)
        diameters.append(2 * np.sqrt(inside.sum() / np.pi))
        brightness.append(float(np.exp(rng.normal(0, brightness_spread))))
        labels[window][free] = len(centres)
        rim = rng.uniform(0.1, 0.5)
        profile[window][free] = brightness[-1] * (1 - rim * r2[free] ** 2)
        covered += n_free

    # chromatin texture and spots, only inside the nuclei
    strength = _draw(rng, texture)
    grain = _band_pass(rng, shape, max(0.6, typical / 14))
    spots = np.zeros(shape, np.float32)
    nuclear = np.flatnonzero(labels)
    if nuclear.size:
        n_spots = rng.poisson(3 * len(centres))
        at = rng.choice(nuclear, size=n_spots)
        np.put(spots, at, rng.choice([-1.0, 1.0], size=n_spots, p=[0.3, 0.7]) *
               rng.uniform(0.5, 1.5, size=n_spots))
        spots = ndimage.gaussian_filter(spots, typical / 12) * (2 * np.pi * (typical / 12) ** 2)
    signal = profile * np.clip(1 + strength * grain + 0.6 * spots, 0.15, None)
    signal[labels == 0] = 0
    haze = _draw(rng, (0.0, 0.3))
    if haze > 0:
        signal = signal + haze * ndimage.gaussian_filter(signal, 0.6 * typical)
    sigma = _draw(rng, blur)
    clean = ndimage.gaussian_filter(signal, sigma) if sigma > 0 else signal
    clean = clean + _background(rng, shape, _draw(rng, (0.02, 0.3)))

    # noise: Poisson for a random share of the variance, Gaussian read noise for the rest
    asked = _draw(rng, snr, log=True)
    inside = labels > 0
    level = float(clean[inside].mean()) if inside.any() else 1.0
    contrast = level - float(clean[~inside].mean()) if inside.any() else 1.0
    sd = contrast / asked
    share = rng.uniform(0.5, 1.0)
    photons = level / (share * sd * sd)
    noisy = rng.poisson(np.clip(clean, 0, None) * photons) / photons
    noisy = noisy + rng.normal(0, np.sqrt(1 - share) * sd, size=shape)
    residual = (noisy - clean)[inside] if inside.any() else np.zeros(1)
    measured = contrast / max(float(residual.std()), 1e-12)
    gain = _draw(rng, (50.0, 2000.0), log=True)
    image = (noisy * gain + _draw(rng, (100.0, 500.0))).astype(np.float32)
    if not return_info:
        return image, labels
    info = NucleiInfo(
        centres=np.array(centres, float).reshape(-1, 2),
        diameters=np.array(diameters, float), areas=np.bincount(labels.ravel())[1:],
        brightness=np.array(brightness, float), snr=asked, measured_snr=float(measured),
        blur=sigma, diameter=typical, coverage=float(inside.mean()))
    return image, labels, info


def synth_fluorescence_nuclei_dataset(
    n_images: int, seed: Seed = 0, shape: Sequence[int] = (256, 256), **kwargs
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Generate ``n_images`` independent :func:`synth_fluorescence_nuclei` images.

    Image ``i`` uses the ``i``-th child of ``numpy.random.SeedSequence(seed)``; ``kwargs``
    go to :func:`synth_fluorescence_nuclei`.
    """
    return [synth_fluorescence_nuclei(shape, seed=s, **kwargs) for s in _seeds(n_images, seed)]
