"""Synthetic touching nuclei (:func:`synth_nuclei`): ellipses or ellipsoids of one
brightness in touching clusters, their data sets and their writer (re-exported by
:mod:`ppp_zoo.data.synth`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ._synth_common import (
    Seed,
    _render,
    _seeds,
    _smooth_texture,
    _validate_range,
    _validate_rendering,
    _validate_shape,
    _write_pairs,
)

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
