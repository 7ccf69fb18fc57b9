"""What the synthetic generators share (see :mod:`ppp_zoo.data.synth`): argument checks,
the rendering of a noise-free signal into a microscope-like image (blur, uneven background,
Poisson noise), the seeds of a data set's images, and the writing of image and mask pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import UserError
from ..io import write_image, write_labels

Seed = int | np.random.SeedSequence


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
