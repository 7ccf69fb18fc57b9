"""Renderings of synthetic worms (see :func:`ppp_zoo.data.synth_worms`).

* fluorescence: worms brighter than an uneven dark background, brighter where they cross;
* brightfield (BBBC010's transmitted-light channel): an uneven bright background with
  vignetting, worms darker than it (darker still where they cross), with a granular gut, a
  bright halo along their rim, and in one image of five lighter than the background (phase
  contrast-like); optionally a well edge (the dark, unlit region outside a round well, with a
  dark rim and a thin bright line) crossing the image.

Both may carry unlabelled debris: specks, small blobs and short thin fibres.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._synth_common import _background, _smooth_texture

RENDERINGS = ("fluorescence", "brightfield", "mixed")


def _debris(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """Unlabelled debris of ``count`` particles: round specks and blobs (radius 0.8-4 px)
    and, one particle in four, a short thin curved fibre (10-30 px long, 1-2.5 px wide)."""
    out = np.zeros(shape, np.float32)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    for _ in range(count):
        strength = rng.uniform(0.3, 1.0)
        if rng.random() < 0.25:  # fibre: a curved polyline of disks
            length, width = rng.uniform(10, 30), rng.uniform(1.0, 2.5)
            angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.15, 24))
            steps = (length / 24) * np.stack([np.sin(angle), np.cos(angle)], axis=1)
            points = rng.uniform(0, 1, 2) * shape + np.cumsum(steps, axis=0)
            fibre = np.zeros(shape, bool)
            idx = np.round(points).astype(int)
            keep = np.all((idx >= 0) & (idx < shape), axis=1)
            fibre[idx[keep, 0], idx[keep, 1]] = True
            fibre = ndimage.binary_dilation(fibre, iterations=max(1, int(round(width / 2))))
            out = np.maximum(out, strength * fibre)
        else:
            cy, cx = rng.uniform(0, 1, 2) * shape
            ry, rx = rng.uniform(0.8, 4.0), rng.uniform(0.8, 4.0)
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            out = np.maximum(out, strength * blob)
    return out


def _well_edge(rng: np.random.Generator, shape: tuple[int, int]):
    """A round well's edge crossing the image: ``(inside, rim)`` where ``inside`` is 1 in the
    well and ``rim`` marks a band a few pixels wide along its edge (signed: dark band
    outside, thin bright line inside)."""
    diag = float(np.hypot(*shape))
    radius = rng.uniform(1.0, 2.0) * diag
    angle = rng.uniform(0, 2 * np.pi)
    centre = np.asarray(shape) / 2 + (radius - rng.uniform(0.15, 0.4) * min(shape)) * \
        np.array([np.sin(angle), np.cos(angle)])
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    dist = np.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) - radius  # < 0 inside
    inside = 1.0 / (1.0 + np.exp(dist / 1.5))
    band = rng.uniform(3, 8)
    rim = -np.exp(-0.5 * ((dist - band) / (band / 2)) ** 2) + \
        0.6 * np.exp(-0.5 * ((dist + 2.0) / 1.0) ** 2)
    return inside.astype(np.float32), rim.astype(np.float32)


def render_worms(
    rng: np.random.Generator,
    density: np.ndarray,
    rendering: str,
    *,
    blur: float,
    background: float,
    photons: float,
    debris: int,
    well_edge: float,
) -> np.ndarray:
    """Render the worm ``density`` (the summed thickness of the worms at each pixel) as a
    noisy image; ``rendering`` is ``"fluorescence"`` or ``"brightfield"`` (``"mixed"`` is
    resolved by the caller)."""
    shape = density.shape
    specks = _debris(rng, shape, debris) if debris else None
    if rendering == "fluorescence":
        # overlaps are brighter but saturate: 1 - exp(-k d) is linear for one worm
        signal = (1.0 - np.exp(-1.2 * density)) / 1.2 * 1.3
        signal *= _smooth_texture(rng, shape, sigma=2.0, amount=0.1)
        if specks is not None:
            signal = np.maximum(signal, rng.uniform(0.3, 1.0) * specks)
        clean = ndimage.gaussian_filter(signal, blur) if blur > 0 else signal
        clean = clean + _background(rng, shape, background)
    else:
        level = rng.uniform(0.45, 0.8)
        light = _background(rng, shape, level)
        yy, xx = np.ogrid[-1:1:shape[0] * 1j, -1:1:shape[1] * 1j]
        light *= (1.0 - rng.uniform(0.0, 0.3) * (yy ** 2 + xx ** 2) / 2).astype(np.float32)
        body = density > 0
        absorb = 1.0 - np.exp(-rng.uniform(0.8, 1.8) * density)
        absorb *= _smooth_texture(rng, shape, sigma=1.2, amount=rng.uniform(0.1, 0.3))
        halo_sigma = rng.uniform(1.0, 3.0)
        halo = ndimage.gaussian_filter(body.astype(np.float32), halo_sigma) * ~body
        contrast = rng.uniform(0.35, 0.75)
        sign = -1.0 if rng.random() < 0.8 else 0.6  # worms darker, or lighter than the field
        transmitted = 1.0 + sign * contrast * absorb + rng.uniform(0.0, 0.5) * halo
        if specks is not None:
            transmitted -= rng.uniform(0.2, 0.6) * specks
        clean = light * transmitted
        if rng.random() < well_edge:
            inside, rim = _well_edge(rng, shape)
            outside = rng.uniform(0.15, 0.45)  # the unlit part beyond the well's wall
            clean = clean * (outside + (1.0 - outside) * inside) \
                + level * rng.uniform(0.2, 0.5) * rim
        if blur > 0:
            clean = ndimage.gaussian_filter(clean, blur)
    counts = rng.poisson(np.clip(clean, 0, None) * photons)
    return (counts / photons).astype(np.float32)
