"""Reading and writing images, label images and arrays.

Every writer is atomic: data goes to a temporary file in the target folder and is renamed
into place only once complete, so a failure never leaves a half-written file behind.
Readers raise ``ValueError`` (unreadable or unsupported content) or ``FileNotFoundError``
with a message that names the file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import UserError

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
        raise UserError(f"{path}: is a folder, expected an image file")
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
            raise UserError(
                f"{path}: unsupported file type {suffix!r} (use one of {', '.join(IMAGE_SUFFIXES)})"
            )
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise UserError(f"{path}: cannot read image ({err})") from None
    except Exception as err:  # decoders raise many types for corrupt files
        raise UserError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    arr = np.asarray(arr)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise UserError(f"{path}: unsupported pixel type {arr.dtype}")
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
            raise UserError(f"labels must be non-negative, got minimum {labels.min()}")
        out = labels.astype(label_dtype(labels))
    return write_image(path, out)


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an array atomically as tif, png or npy (chosen by the suffix of ``path``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".png", ".npy"):
        raise UserError(f"{path}: cannot write {suffix!r} files (use .tif, .png or .npy)")
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


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read eagerly (no pickles).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a readable ``.npz`` (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001 - zip, pickle and format errors alike
        raise UserError(f"{path}: cannot read as .npz ({type(err).__name__}: {err})") from None


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
        raise UserError(f"{path}: model outputs are read from {', '.join(OUTPUT_SUFFIXES)} "
                         f"files, not {suffix or 'a file without suffix'}")
    try:
        if suffix == ".npz":
            arrays = read_npz(path)
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
        raise UserError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
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
        raise UserError(f"{path}: reading HDF5 needs h5py (pip install h5py)") from None
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        name = "exported_data" if "exported_data" in names else names[0] if len(names) == 1 \
            else None
        if name is None:
            raise UserError(f"{path}: no dataset 'exported_data' (found: "
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
            raise UserError(f"{where}: axes {axes!r} do not describe an array of shape "
                             f"{array.shape}")
        for i in sorted((i for i, a in enumerate(letters) if a not in space + "c"),
                        reverse=True):
            if array.shape[i] != 1 and letters[i] == "z":
                raise UserError(f"{where}: axes {axes.upper()} (shape {array.shape}) do not "
                                 f"fit this {ndim}D model's output (C{space.upper()})")
            if array.shape[i] != 1:
                raise UserError(f"{where}: axis {axes[i]!r} has {array.shape[i]} entries; "
                                 "save one image (batch/time 1) per file")
            array, letters = np.take(array, 0, axis=i), letters[:i] + letters[i + 1:]
        if "c" not in letters and channels == 1:
            array, letters = array[None], ["c"] + letters
        if sorted(letters) != sorted("c" + space):
            raise UserError(f"{where}: axes {''.join(letters).upper()} do not fit this "
                             f"{ndim}D model's output (C{space.upper()})")
        array = np.transpose(array, [letters.index(a) for a in "c" + space])
    else:
        while array.ndim > ndim + 1 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != ndim + 1:
            raise UserError(f"{where}: shape {array.shape} does not fit this {ndim}D model's "
                             f"output ({channels} channels and {ndim} space axes)")
        if array.shape[0] != channels and array.shape[-1] == channels:
            array = np.moveaxis(array, -1, 0)
    if array.shape[0] != channels:
        raise UserError(f"{where}: {array.shape[0]} channels, but the model outputs "
                         f"{channels} (is it the output of this model?)")
    if array.dtype.kind not in "fiu":
        raise UserError(f"{where}: dtype {array.dtype} is not numeric")
    return np.ascontiguousarray(array, dtype=np.float32)


# --------------------------------------------------------------------------- large images
# OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3), plain zarr arrays, TIFF and .npy read block
# by block without loading the whole image; zarr is imported only here (the [dask] extra).
LARGE_SUFFIXES = (".zarr", ".tif", ".tiff", ".npy")
_NGFF_SPACE = "zyx"
_OPEN_ARRAYS = 8
"""Opened large inputs kept per process (a dask worker reads many blocks of one image)."""
_open_arrays: collections.OrderedDict = collections.OrderedDict()  # (path, array) -> array
_open_lock = threading.Lock()


def _import_zarr():
    try:
        import zarr
    except ImportError:
        from .errors import SetupError

        raise SetupError('reading and writing zarr needs the [dask] extra: '
                         'pip install "ppp-zoo[dask]"') from None
    return zarr


def is_zarr(path: str | os.PathLike) -> bool:
    """A zarr store (folder with zarr metadata, or named ``*.zarr``)."""
    path = Path(path)
    return path.suffix.lower() == ".zarr" or any(
        (path / name).is_file() for name in (".zgroup", ".zarray", "zarr.json"))


def _ngff_attrs(attrs: dict) -> dict:
    """The NGFF attributes of a group: 0.5 keeps them under ``ome``, 0.4 at the top."""
    return dict(attrs.get("ome", attrs))


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """A large image on disk, read block by block (pickles as its description only).

    Attributes
    ----------
    path : str
        File or zarr store.
    kind : {"ome-zarr", "zarr", "tiff", "npy"}
    array_path : str
        The array inside a zarr store (``""`` for an array at its root).
    axes : str
        One lower-case letter per stored axis, from ``"tczyx"``.
    shape : tuple of int
        Stored shape.
    dtype : str
    scale : tuple of float
        Pixel size per stored axis (1.0 where the file says nothing).
    units : tuple of str
        Unit per stored axis (``""`` where unknown).
    level : int
        Resolution level of an OME-Zarr image.
    zarr_format : int
        2 or 3 for zarr stores, 0 otherwise.
    """

    path: str
    kind: str
    array_path: str
    axes: str
    shape: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    units: tuple[str, ...]
    level: int = 0
    zarr_format: int = 0

    @property
    def space_axes(self) -> str:
        return "".join(a for a in self.axes if a in _NGFF_SPACE)

    @property
    def space_shape(self) -> tuple[int, ...]:
        return tuple(s for s, a in zip(self.shape, self.axes) if a in _NGFF_SPACE)

    @property
    def space_scale(self) -> tuple[float, ...]:
        return tuple(s for s, a in zip(self.scale, self.axes) if a in _NGFF_SPACE)

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("c")] if "c" in self.axes else 1

    def array(self):
        """The stored array (zarr array, memory map or, for compressed TIFF, in memory)."""
        key = (self.path, self.array_path)
        with _open_lock:  # the most recently used :data:`_OPEN_ARRAYS`, shared by threads
            if key in _open_arrays:
                _open_arrays.move_to_end(key)
                return _open_arrays[key]
        opened = _open_array(self)
        with _open_lock:
            _open_arrays[key] = opened
            while len(_open_arrays) > _OPEN_ARRAYS:
                _open_arrays.popitem(last=False)
        return opened

    def read(self, space: tuple[slice, ...]) -> np.ndarray:
        """The block ``space`` (one slice per space axis) as ``([C,] [Z,] Y, X)``: the
        time axis (of size 1) dropped, a channel axis of size 1 dropped."""
        index, it = [], iter(space)
        for a in self.axes:
            index.append(0 if a == "t" else slice(None) if a == "c" else next(it))
        block = np.asarray(self.array()[tuple(index)])
        if "c" in self.axes and self.channels == 1:
            block = block[0] if self.axes.replace("t", "").index("c") == 0 else \
                np.take(block, 0, axis=self.axes.replace("t", "").index("c"))
        elif "c" in self.axes:
            block = np.moveaxis(block, self.axes.replace("t", "").index("c"), 0)
        return block


def _open_array(src: ImageSource):
    if src.kind in ("ome-zarr", "zarr"):
        zarr = _import_zarr()
        node = zarr.open(src.path, mode="r")
        return node[src.array_path] if src.array_path else node
    if src.kind == "npy":
        return np.load(src.path, mmap_mode="r", allow_pickle=False)
    import tifffile

    try:
        return tifffile.memmap(src.path, mode="r")
    except ValueError:  # compressed or tiled: read once per process
        return tifffile.imread(src.path)


def _axes_for(ndim: int, where: str) -> str:
    if ndim == 2:
        return "yx"
    if ndim == 3:
        return "zyx"
    raise UserError(f"{where}: cannot tell the axes of a {ndim}D array without metadata "
                     "(store it as OME-Zarr with axes)")


def _check_axes(axes: str, shape: tuple[int, ...], where: str) -> str:
    if "t" in axes and shape[axes.index("t")] != 1:
        raise UserError(f"{where}: a time series of {shape[axes.index('t')]} points; "
                         "segment one time point at a time")
    if len(set(axes)) != len(axes) or not set(axes) <= set("tczyx") or \
            not {"y", "x"} <= set(axes):
        raise UserError(f"{where}: unsupported axes {axes!r} (need y and x, and at most "
                         "t, c, z besides)")
    return axes


def open_image_source(path: str | os.PathLike, level: int = 0) -> ImageSource:
    """Describe a large image for block reading: OME-Zarr, a zarr array, TIFF or .npy.

    Parameters
    ----------
    path : path-like
        An OME-Zarr image (the group with ``multiscales`` metadata), a zarr array (or a
        group holding exactly one), a TIFF (memory-mapped when uncompressed) or ``.npy``.
    level : int
        Resolution level of an OME-Zarr image (0 = full resolution).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        No image in the store, a missing level, unsupported axes (one line naming ``path``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if level < 0:
        raise UserError(f"resolution level must be >= 0, got {level}")
    if is_zarr(path):
        return _open_zarr_source(path, level)
    suffix = path.suffix.lower()
    if level:
        raise UserError(f"{path}: resolution level {level} missing ({suffix} files have "
                         "level 0 only)")
    if suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        axes = _check_axes(_axes_for(arr.ndim, str(path)), arr.shape, str(path))
        return ImageSource(str(path), "npy", "", axes, tuple(arr.shape), str(arr.dtype),
                           (1.0,) * arr.ndim, ("",) * arr.ndim)
    if suffix not in (".tif", ".tiff"):
        raise UserError(f"{path}: large images are read from {', '.join(LARGE_SUFFIXES)}, "
                         f"not {suffix or 'a file without suffix'}")
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), str(series.dtype)
            letters = [_AXIS_LETTERS.get(a) for a in series.axes.lower()]
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for bad files
        raise UserError(f"{path}: cannot read TIFF ({type(err).__name__}: {err})") from None
    axes = "".join(letters) if all(letters) else _axes_for(len(shape), str(path))
    return ImageSource(str(path), "tiff", "", _check_axes(axes, shape, str(path)), shape,
                       dtype, (1.0,) * len(shape), ("",) * len(shape))


def _open_zarr_source(path: Path, level: int) -> ImageSource:
    zarr = _import_zarr()
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - missing metadata, bad JSON, ...
        raise UserError(f"{path}: not a zarr store ({describe_error(err)})") from None
    fmt = int(node.metadata.zarr_format)
    if isinstance(node, zarr.Array):
        axes = node.attrs.get("_ARRAY_DIMENSIONS")
        axes = "".join(str(a)[0].lower() for a in axes) if axes else \
            _axes_for(node.ndim, str(path))
        if level:
            raise UserError(f"{path}: resolution level {level} missing (a plain zarr array "
                             "has level 0 only)")
        return ImageSource(str(path), "zarr", "", _check_axes(axes, node.shape, str(path)),
                           tuple(node.shape), str(node.dtype), (1.0,) * node.ndim,
                           ("",) * node.ndim, 0, fmt)
    attrs = _ngff_attrs(node.attrs.asdict())
    multiscales = attrs.get("multiscales")
    if not multiscales:
        arrays = list(node.array_keys())
        if len(arrays) == 1:
            return _open_zarr_source(path / arrays[0], level)
        raise UserError(f"{path}: no image in this zarr group (no OME-Zarr 'multiscales' "
                         f"metadata and {len(arrays) or 'no'} arrays)")
    ms = multiscales[0]
    datasets = ms.get("datasets") or []
    if level >= len(datasets):
        raise UserError(f"{path}: resolution level {level} missing (the image has levels "
                         f"0-{len(datasets) - 1})")
    axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"[5 - node[datasets[0]["path"]].ndim:]]
    names = [(a if isinstance(a, str) else a.get("name", "")).lower() for a in axes_meta]
    units = tuple("" if isinstance(a, str) else str(a.get("unit", "")) for a in axes_meta)
    array = node[datasets[level]["path"]]
    scale = np.ones(array.ndim)
    for transforms in (datasets[level].get("coordinateTransformations") or [],
                       ms.get("coordinateTransformations") or []):
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", ())) == array.ndim:
                scale = scale * np.asarray(t["scale"], float)
    axes = "".join(n[:1] for n in names)
    if len(axes) != array.ndim:
        raise UserError(f"{path}: {len(axes)} axes in the metadata for an array of shape "
                         f"{array.shape}")
    return ImageSource(str(path), "ome-zarr", datasets[level]["path"],
                       _check_axes(axes, tuple(array.shape), str(path)), tuple(array.shape),
                       str(array.dtype), tuple(float(s) for s in scale), units, level, fmt)


def describe_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def ngff_label_attrs(name: str, axes: str, scales: list[tuple[float, ...]],
                     units: tuple[str, ...], zarr_format: int,
                     source_image: str | None = "../../") -> dict:
    """Attributes of an OME-Zarr label image (``multiscales`` + ``image-label``), NGFF 0.4
    for zarr v2 and 0.5 for zarr v3.

    >>> a = ngff_label_attrs("nuclei", "yx", [(1.0, 1.0), (2.0, 2.0)], ("", ""), 2)
    >>> a["multiscales"][0]["datasets"][1]
    {'path': '1', 'coordinateTransformations': [{'type': 'scale', 'scale': [2.0, 2.0]}]}
    """
    version = "0.4" if zarr_format == 2 else "0.5"
    kinds = {"t": "time", "c": "channel"}
    axes_meta = []
    for a, unit in zip(axes, units):
        entry = {"name": a, "type": kinds.get(a, "space")}
        if unit:
            entry["unit"] = unit
        axes_meta.append(entry)
    ms = {"name": name, "axes": axes_meta,
          "datasets": [{"path": str(i), "coordinateTransformations": [
              {"type": "scale", "scale": [float(s) for s in sc]}]}
              for i, sc in enumerate(scales)]}
    label = {"version": version} if version == "0.4" else {}
    if source_image:
        label["source"] = {"image": source_image}
    if version == "0.4":
        return {"multiscales": [dict(ms, version=version)], "image-label": label}
    return {"ome": {"version": version, "multiscales": [ms], "image-label": label}}


def ngff_labels_group_attrs(names: list[str], zarr_format: int) -> dict:
    """Attributes of the ``labels`` group listing the label images."""
    if zarr_format == 2:
        return {"labels": list(names)}
    return {"ome": {"version": "0.5", "labels": list(names)}}


def write_ome_zarr_image(path: str | os.PathLike, image: np.ndarray, axes: str = "yx", *,
                         scale: tuple[float, ...] | None = None, chunks=None,
                         levels: int = 1, zarr_format: int = 2) -> Path:
    """Write ``image`` as an OME-Zarr image (levels by 2x2 striding of y and x); mainly
    for tests, samples and benchmarks. Written to a temporary folder, then moved into
    place."""
    zarr = _import_zarr()
    import shutil

    path = Path(path)
    scale = tuple(scale or (1.0,) * image.ndim)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else "."))
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format)
        scales = []
        level = image
        for i in range(levels):
            factor = [2.0 ** i if a in "yx" else 1.0 for a in axes]
            scales.append(tuple(s * f for s, f in zip(scale, factor)))
            arr = root.create_array(str(i), shape=level.shape, dtype=level.dtype,
                                    chunks=chunks or tuple(min(s, 256) for s in level.shape))
            arr[...] = level
            level = level[tuple(slice(None, None, 2) if a in "yx" else slice(None) for a in axes)]
        attrs = ngff_label_attrs(path.stem, axes, scales, ("",) * len(axes), zarr_format,
                                 source_image=None)
        if zarr_format == 2:
            attrs.pop("image-label")
        else:
            attrs["ome"].pop("image-label")
        root.attrs.update(attrs)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
