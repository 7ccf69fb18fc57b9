"""Synthetic fluorescence nuclei that resemble a real microscope's
(:func:`synth_fluorescence_nuclei`): per-image size, crowding, texture, optics and camera
drawn from ranges, and what was drawn (:class:`NucleiInfo`); re-exported by
:mod:`ppp_zoo.data.synth`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import UserError
from ._synth_common import Seed, _background, _seeds, _validate_range, _validate_shape

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
