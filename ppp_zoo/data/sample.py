"""Real sample data shipped inside the ``stardist`` package.

* ``img2d.tif`` / ``mask2d.tif``: a 512x512 uint16 fluorescence crop of the 2018 Kaggle
  Data Science Bowl (DSB) nuclei set, 125 annotated nuclei.
* ``img3d.tif`` / ``mask3d.tif``: a 31x61x57 synthetic 3D nuclei volume, 51 nuclei.

Both are BSD-3 licensed. The files are located through the import system without importing
``stardist`` itself, so TensorFlow is never needed. The stored label ids are not consecutive;
every loader here relabels them to ``1..N``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ..errors import SetupError, UserError
from ..io import read_image, write_image, write_labels
from ..postprocess.labels import relabel_consecutive

_MISSING = "the sample data ships with the 'stardist' package: pip install 'ppp-zoo[data]'"

__all__ = ["load_dsb_sample", "dsb_split", "load_nuclei3d_sample", "write_sample"]


def _stardist_images_dir() -> Path:
    """Folder ``stardist/data/images`` of the installed stardist package (not imported)."""
    try:
        spec = importlib.util.find_spec("stardist")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "data" / "images"
        if folder.is_dir():
            return folder
    raise SetupError(_MISSING)


def _load_pair(image_name: str, mask_name: str) -> tuple[np.ndarray, np.ndarray]:
    folder = _stardist_images_dir()
    image = read_image(folder / image_name)
    labels = relabel_consecutive(read_image(folder / mask_name), np.int32)
    return image, labels


def load_dsb_sample() -> tuple[np.ndarray, np.ndarray]:
    """Load the 2D DSB 2018 nuclei crop shipped with stardist.

    Returns
    -------
    image : ndarray of uint16, shape (512, 512)
        Fluorescence image.
    labels : ndarray of int32, shape (512, 512)
        Instance labels, relabelled to the consecutive ids ``1..125`` (0 is background).

    Raises
    ------
    RuntimeError
        If the ``stardist`` package is not installed.

    Examples
    --------
    >>> image, labels = load_dsb_sample()
    >>> image.shape, int(labels.max())
    ((512, 512), 125)
    """
    return _load_pair("img2d.tif", "mask2d.tif")


def load_nuclei3d_sample() -> tuple[np.ndarray, np.ndarray]:
    """Load the small synthetic 3D nuclei volume shipped with stardist.

    Returns
    -------
    image : ndarray of uint16, shape (31, 61, 57)
        The (Z, Y, X) volume.
    labels : ndarray of int32, shape (31, 61, 57)
        Instance labels, relabelled to ``1..51``.

    Raises
    ------
    RuntimeError
        If the ``stardist`` package is not installed.

    Examples
    --------
    >>> image, labels = load_nuclei3d_sample()
    >>> image.shape, int(labels.max())
    ((31, 61, 57), 51)
    """
    return _load_pair("img3d.tif", "mask3d.tif")


def _validate_split_input(image: np.ndarray, labels: np.ndarray, column: int | None) -> int:
    if image.ndim != 2 or labels.shape != image.shape:
        raise UserError(
            "expected a 2D image and labels of the same shape, "
            f"got {image.shape} and {labels.shape}"
        )
    width = image.shape[1]
    column = width // 2 if column is None else int(column)
    if not 0 < column < width:
        raise UserError(f"split column must lie in 1..{width - 1}, got {column}")
    return column


def dsb_split(
    image: np.ndarray, labels: np.ndarray, column: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split a 2D image and its labels into a left (train) and a right (test) half.

    This is the standard split of the DSB sample: train on columns ``0..255``, test on
    columns ``256..511``. Each half is relabelled to consecutive ids; a nucleus cut by the
    split counts as an instance on both sides.

    Parameters
    ----------
    image : ndarray, shape (M, N)
        The image.
    labels : ndarray of int, shape (M, N)
        Its instance labels.
    column : int, optional
        First column of the test half. Default: ``N // 2``.

    Returns
    -------
    split : dict
        ``{"train": (image, labels), "test": (image, labels)}``; the halves are copies.

    Raises
    ------
    ValueError
        If the arrays are not 2D of the same shape or ``column`` is outside the image.

    Examples
    --------
    >>> split = dsb_split(*load_dsb_sample())
    >>> split["test"][0].shape, int(split["test"][1].max())
    ((512, 256), 57)
    """
    image, labels = np.asarray(image), np.asarray(labels)
    column = _validate_split_input(image, labels, column)
    return {
        "train": (image[:, :column].copy(), relabel_consecutive(labels[:, :column], np.int32)),
        "test": (image[:, column:].copy(), relabel_consecutive(labels[:, column:], np.int32)),
    }


def write_sample(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the DSB sample and its train/test halves as tif files.

    Parameters
    ----------
    out_dir : path-like
        Output folder, created if needed.

    Returns
    -------
    paths : dict of str to Path
        Keys ``image``, ``labels``, ``train_image``, ``train_labels``, ``test_image``,
        ``test_labels``; each file is ``<key>.tif`` in ``out_dir``. Images are written as
        uint16, labels as uint16 label images.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     sorted(write_sample(tmp))
    ['image', 'labels', 'test_image', 'test_labels', 'train_image', 'train_labels']
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image, labels = load_dsb_sample()
    split = dsb_split(image, labels)
    pairs = {"": (image, labels), "train_": split["train"], "test_": split["test"]}
    paths: dict[str, Path] = {}
    for prefix, (img, lab) in pairs.items():
        paths[f"{prefix}image"] = write_image(out_dir / f"{prefix}image.tif", img)
        paths[f"{prefix}labels"] = write_labels(out_dir / f"{prefix}labels.tif", lab)
    return paths
