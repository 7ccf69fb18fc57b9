"""The example data a package carries, made by :func:`ppp_zoo.export.export_model`: the
test input (an example image cropped to the smallest size, in camera-like intensities,
clipped so that every percentile definition normalises it alike) and the test output
computed from it, the larger example image, and the cover picture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..predict import Checkpoint, Geometry, normalize_image
from .wrapper import ExportNet

#: test tensors are at the minimal size; the sample input and cover use at most this size
SAMPLE_SIZE = {2: 256, 3: 48}
#: share of the test input clipped at each end, so that the normalisation percentiles fall
#: on ties (deepImageJ takes nearest-rank percentiles, bioimageio.core interpolates)
CLIP_FRACTION = 0.03


# --------------------------------------------------------------------------- data
def _example_image(bundle: Checkpoint, geometry: Geometry):
    """The validation or training image whose smallest side is largest (normalised) and its
    labels, for the test input, the sample and the cover; synthetic nuclei when the training
    data cannot be loaded any more."""
    from ..config import config_from_dict

    image, target = None, None
    with contextlib.suppress(Exception):
        from ..train import load_training_data

        train, val = load_training_data(config_from_dict(bundle.config))
        image, target = max(val + train, key=lambda pair: min(pair[0].shape))
    if image is None:
        from ..data.synth import synth_nuclei_dataset

        shape = (SAMPLE_SIZE[geometry.ndim],) * geometry.ndim
        pair = synth_nuclei_dataset(1, seed=0, shape=shape)[0]
        image, target = normalize_image(pair[0], bundle.normalize), pair[1]
    return np.asarray(image, np.float32), target


def _fit(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Centre crop (or mirror pad) ``image`` to ``size``."""
    pad = [(0, max(0, s - n)) for n, s in zip(image.shape, size)]
    if any(p for _, p in pad):
        image = np.pad(image, pad, mode="symmetric")
    start = [(n - s) // 2 for n, s in zip(image.shape, size)]
    return np.ascontiguousarray(image[tuple(slice(a, a + s) for a, s in zip(start, size))])


def _as_raw(normalized: np.ndarray) -> np.ndarray:
    """Intensities in a camera-like range: the preprocessing maps them back (it is affine
    invariant), so the test input exercises the declared normalisation."""
    return (np.asarray(normalized, np.float32) * 1000.0 + 1000.0).astype(np.float32)


def _with_tied_percentiles(raw: np.ndarray, normalize) -> np.ndarray:
    """``raw`` clipped (like a saturated camera and a flat background) at the values
    ``CLIP_FRACTION`` beyond the normalisation percentiles, so that every percentile
    definition (nearest rank, linear interpolation) gives exactly the clip values.

    Only percentile normalisation needs it; mean/std are the same everywhere.
    """
    if normalize.mode != "percentile":
        return raw
    values = np.sort(raw.ravel())
    n = len(values)
    lo_rank = int(n * min(normalize.p_low / 100 + CLIP_FRACTION, 0.45))
    hi_rank = int(n * max(normalize.p_high / 100 - CLIP_FRACTION, 0.55))
    return np.clip(raw, values[lo_rank], values[hi_rank]).astype(np.float32)


def _reference_output(model: ExportNet, raw: np.ndarray, normalize):
    """Test output as bioimageio.core's model test computes it: the declared
    preprocessing, then the network on exactly the test input (no halo padding)."""
    x = np.stack([normalize_image(b[0], normalize)[None] for b in raw])
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x)))
    return x, np.ascontiguousarray(out.numpy())


# --------------------------------------------------------------------------- pictures
def _instance_colours(labels: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    n = int(labels.max(initial=0))
    colours = np.concatenate([np.zeros((1, 3)), rng.uniform(0.25, 1.0, size=(n, 3))])
    return colours[labels]


def _write_cover(path: Path, image: np.ndarray, numinst: np.ndarray, labels: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if labels.dtype == bool:  # overlapping masks: show each pixel's first instance
        labels = (np.where(labels.any(axis=0), labels.argmax(axis=0) + 1, 0) if len(labels)
                  else np.zeros(image.shape, np.int32))
    if image.ndim == 3:  # 3D: the middle slice
        z = image.shape[0] // 2
        image, numinst, labels = image[z], numinst[:, z], labels[z]
    rgb = np.stack([numinst[2], numinst[1], np.zeros_like(numinst[1])], axis=-1)
    fig = Figure(figsize=(12, 6), dpi=100)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.9, wspace=0.04)
    panels = [("input", image, "gray"), ("numinst: green 1, red 2+", np.clip(rgb, 0, 1), None),
              (f"instances ({int(labels.max(initial=0))})", _instance_colours(labels), None)]
    for i, (title, data, cmap) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.savefig(path)
