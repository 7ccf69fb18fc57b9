"""Reading and writing images, label images and arrays.

Every writer is atomic: data goes to a temporary file in the target folder and is renamed
into place only once complete, so a failure never leaves a half-written file behind.
Readers raise ``ValueError`` (unreadable or unsupported content) or ``FileNotFoundError``
with a message that names the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image or label array from a tif, png, jpg or npy file.

    Parameters
    ----------
    path : path-like
        File to read. The format is chosen by suffix.

    Returns
    -------
    image : ndarray
        The array as stored (no dtype conversion, no axis reordering).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the suffix is not supported or the content cannot be decoded.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected an image file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        elif suffix in (".png", ".jpg", ".jpeg"):
            import imageio.v3 as iio

            arr = iio.imread(path)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            raise ValueError(
                f"{path}: unsupported file type {suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})"
            )
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: cannot read image ({err})") from None
    except Exception as err:  # decoders raise many types for corrupt files
        raise ValueError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    arr = np.asarray(arr)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"{path}: unsupported pixel type {arr.dtype}")
    return arr


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    The temporary name keeps the suffix of ``path`` so that writers choosing the
    format by suffix behave the same.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def label_dtype(labels: np.ndarray) -> np.dtype:
    """Smallest unsigned dtype (uint16 or uint32) that holds every id of ``labels``."""
    top = int(labels.max()) if labels.size else 0
    return np.dtype(np.uint16) if top <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label image (or a stack of instance masks) atomically.

    Label images are stored as uint16, or uint32 when more ids are needed; boolean mask
    stacks as uint8. The format follows the suffix (tif, png, npy).
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        out = labels.astype(np.uint8)
    else:
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels must be non-negative, got minimum {labels.min()}")
        out = labels.astype(label_dtype(labels))
    return write_image(path, out)


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an array atomically as tif, png or npy (chosen by the suffix of ``path``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".png", ".npy"):
        raise ValueError(f"{path}: cannot write {suffix!r} files (use .tif, .png or .npy)")
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, image, compression="zlib", photometric="minisblack")
        elif suffix == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, image, extension=".png")
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, image, allow_pickle=False)
    return path


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write arrays to a compressed ``.npz`` file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path
