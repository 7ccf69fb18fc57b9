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


# --------------------------------------------------------------------------- model outputs
OUTPUT_SUFFIXES = (".npz", ".npy", ".tif", ".tiff", ".h5", ".hdf5", ".hdf")
#: ImageJ / tifffile / vigra axis letters -> ours (batch and time both mean "a sample")
_AXIS_LETTERS = {"t": "t", "b": "t", "z": "z", "c": "c", "y": "y", "x": "x", "s": "c"}


def read_model_output(path: str | os.PathLike, *, channels: int, ndim: int,
                      tensor_id: str) -> dict[str, np.ndarray]:
    """Read a model's raw output as a tool saved it, channels first.

    Parameters
    ----------
    path : path-like
        - ``.tif``: deepImageJ's output (an ImageJ hyperstack, XYCZT order, the tensor's
          channels as C), or any TIFF whose axes tifffile can tell;
        - ``.h5`` / ``.hdf5``: ilastik's export (dataset ``exported_data``, channel-last by
          default; the order is read from its ``axistags``);
        - ``.npy``: one array; ``.npz``: arrays by tensor id (as ``ppp-zoo segment
          --save-outputs`` writes them).
    channels : int
        Channels of the model's output tensor.
    ndim : int
        Space axes of the model (2 or 3).
    tensor_id : str
        The output tensor's id (the key for single-array formats).

    Returns
    -------
    dict of str to ndarray
        ``{tensor_id: array (channels, [Z,] Y, X)}``, or for ``.npz`` every stored array
        (with a leading batch axis of size 1 dropped).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Unsupported suffix, unreadable file, or axes that match neither the file's metadata
        nor the model (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{path}: model outputs are read from {', '.join(OUTPUT_SUFFIXES)} "
                         f"files, not {suffix or 'a file without suffix'}")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            return {k: (v[0] if v.ndim == ndim + 2 and v.shape[0] == 1 else v)
                    for k, v in arrays.items()}
        if suffix == ".npy":
            array, axes = np.load(path, allow_pickle=False), None
        elif suffix in (".tif", ".tiff"):
            array, axes = _read_tiff_with_axes(path)
        else:
            array, axes = _read_hdf5_with_axes(path)
    except (OSError, ValueError, KeyError, EOFError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
    return {tensor_id: channels_first(np.asarray(array), axes, channels=channels, ndim=ndim,
                                      where=str(path))}


def _read_tiff_with_axes(path: Path) -> tuple[np.ndarray, str | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes.lower()
        array = series.asarray()
    known = all(a in _AXIS_LETTERS for a in axes)
    return array, axes if known else None


def _read_hdf5_with_axes(path: Path) -> tuple[np.ndarray, str | None]:
    import json

    try:
        import h5py
    except ImportError:
        raise ValueError(f"{path}: reading HDF5 needs h5py (pip install h5py)") from None
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        name = "exported_data" if "exported_data" in names else names[0] if len(names) == 1 \
            else None
        if name is None:
            raise ValueError(f"{path}: no dataset 'exported_data' (found: "
                             f"{', '.join(names) or 'none'})")
        dataset = f[name]
        array = dataset[()]
        tags = dataset.attrs.get("axistags")
    axes = None
    if tags is not None:
        try:
            keys = [a["key"] for a in json.loads(tags)["axes"]]
            axes = "".join(keys).lower()
        except (ValueError, KeyError, TypeError):
            axes = None
    return array, axes if axes and all(a in _AXIS_LETTERS for a in axes) else None


def channels_first(array: np.ndarray, axes: str | None, *, channels: int, ndim: int,
                   where: str = "the model output") -> np.ndarray:
    """``array`` as ``(channels, [Z,] Y, X)`` float32, from its axis letters or, without
    them, from the model's channel count (channels first or last).

    >>> channels_first(np.zeros((1, 2, 5, 6)), "zcyx", channels=2, ndim=2).shape
    (2, 5, 6)
    >>> channels_first(np.zeros((5, 6, 2)), None, channels=2, ndim=2).shape
    (2, 5, 6)
    """
    space = "zyx"[3 - ndim:]
    if axes is not None:
        letters = [_AXIS_LETTERS[a] for a in axes]
        if len(letters) != array.ndim or len(set(letters)) != len(letters):
            raise ValueError(f"{where}: axes {axes!r} do not describe an array of shape "
                             f"{array.shape}")
        for i in sorted((i for i, a in enumerate(letters) if a not in space + "c"),
                        reverse=True):
            if array.shape[i] != 1 and letters[i] == "z":
                raise ValueError(f"{where}: axes {axes.upper()} (shape {array.shape}) do not "
                                 f"fit this {ndim}D model's output (C{space.upper()})")
            if array.shape[i] != 1:
                raise ValueError(f"{where}: axis {axes[i]!r} has {array.shape[i]} entries; "
                                 "save one image (batch/time 1) per file")
            array, letters = np.take(array, 0, axis=i), letters[:i] + letters[i + 1:]
        if "c" not in letters and channels == 1:
            array, letters = array[None], ["c"] + letters
        if sorted(letters) != sorted("c" + space):
            raise ValueError(f"{where}: axes {''.join(letters).upper()} do not fit this "
                             f"{ndim}D model's output (C{space.upper()})")
        array = np.transpose(array, [letters.index(a) for a in "c" + space])
    else:
        while array.ndim > ndim + 1 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != ndim + 1:
            raise ValueError(f"{where}: shape {array.shape} does not fit this {ndim}D model's "
                             f"output ({channels} channels and {ndim} space axes)")
        if array.shape[0] != channels and array.shape[-1] == channels:
            array = np.moveaxis(array, -1, 0)
    if array.shape[0] != channels:
        raise ValueError(f"{where}: {array.shape[0]} channels, but the model outputs "
                         f"{channels} (is it the output of this model?)")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{where}: dtype {array.dtype} is not numeric")
    return np.ascontiguousarray(array, dtype=np.float32)
