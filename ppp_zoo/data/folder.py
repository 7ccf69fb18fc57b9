"""Data sets stored as folders of image files.

* :class:`FolderDataset`: ``root/images/<name>.<ext>`` paired with ``root/masks/<name>.<ext>``
  (or ``root/labels/``) by file stem, for label images or stacks of overlapping masks.
* :func:`load_bbbc010`: the BBBC010 C. elegans live/dead set (one image per well and channel,
  one binary PNG per worm as ground truth), from a local copy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import IMAGE_SUFFIXES, read_image

__all__ = ["FolderDataset", "load_bbbc010"]

_READABLE = frozenset(IMAGE_SUFFIXES)


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """Readable image files of ``folder`` keyed by stem; two files with one stem are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in _READABLE:
            continue
        if path.stem in found:
            raise UserError(
                f"{folder}: two files named {path.stem!r}: {found[path.stem].name}, {path.name}"
            )
        found[path.stem] = path
    return found


def _labels_to_masks(labels: np.ndarray) -> np.ndarray:
    """Label image (…) -> one boolean mask per id, ordered by id, shape (N, …)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    return labels[None] == ids.reshape((-1,) + (1,) * labels.ndim)


class FolderDataset:
    """Images and their instance annotations in ``root/images`` and ``root/masks``.

    Every readable file (tif, tiff, png, jpg, npy) in ``root/images`` is paired with the file
    of the same stem in ``root/masks`` (or ``root/labels`` when there is no ``masks``
    folder); extensions may differ. Annotation files without an image are ignored. Files are
    read lazily on indexing.

    Parameters
    ----------
    root : path-like
        Data set folder.
    overlapping : bool
        ``False``: annotations are label images of the image's shape, returned as stored.
        ``True``: annotations are returned as a boolean ``(N, [Z,] Y, X)`` mask stack; a label
        image is split into one mask per id (ordered by id), and a stored ``(N, [Z,] Y, X)``
        stack of 0/1 planes (uint8 or bool) is taken as the masks directly. A stored stack
        with ``overlapping=False`` is an error.

    Raises
    ------
    ValueError
        If a folder is missing or empty, two files share a stem, or an image has no
        annotation. Indexing raises it when an annotation's shape does not fit its image.

    Examples
    --------
    >>> import tempfile
    >>> from ppp_zoo.data import write_synth_nuclei
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_synth_nuclei(tmp, n_images=2, shape=(64, 64), n_nuclei=4)
    ...     data = FolderDataset(tmp)
    ...     image, labels = data[0]
    ...     len(data), data.names, labels.shape
    (2, ['nuclei_000', 'nuclei_001'], (64, 64))
    """

    def __init__(self, root: str | os.PathLike, overlapping: bool = False):
        self.root = Path(root)
        self.overlapping = bool(overlapping)
        image_dir = self.root / "images"
        if not image_dir.is_dir():
            raise UserError(f"{self.root}: no 'images' folder")
        for candidate in ("masks", "labels"):
            if (self.root / candidate).is_dir():
                self.mask_dir = self.root / candidate
                break
        else:
            raise UserError(f"{self.root}: no 'masks' or 'labels' folder next to 'images'")
        images = _files_by_stem(image_dir)
        if not images:
            raise UserError(f"{image_dir}: no image files ({', '.join(sorted(_READABLE))})")
        masks = _files_by_stem(self.mask_dir)
        missing = [stem for stem in images if stem not in masks]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise UserError(f"{self.mask_dir}: no annotation for {len(missing)} image(s): {shown}")
        self.names: list[str] = list(images)
        self._pairs = [(images[name], masks[name]) for name in self.names]

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return f"FolderDataset({str(self.root)!r}, overlapping={self.overlapping}, n={len(self)})"

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image, labels)`` or, with ``overlapping=True``, ``(image, masks)``."""
        n = len(self._pairs)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a data set of {n} images")
        image_path, mask_path = self._pairs[index]
        image = read_image(image_path)
        target = read_image(mask_path)
        return image, self._annotation(image, target, image_path, mask_path)

    def _annotation(self, image: np.ndarray, target: np.ndarray, image_path: Path, mask_path: Path):
        if target.dtype.kind not in "biu":
            raise UserError(
                f"{mask_path}: annotations must be integer or boolean, got {target.dtype}"
            )
        spatial = [image.shape]
        if image.ndim >= 3 and image.shape[-1] <= 4:  # channels last, e.g. an RGB png
            spatial.append(image.shape[:-1])
        if target.shape in spatial:
            return _labels_to_masks(target) if self.overlapping else target
        if target.ndim >= 3 and target.shape[1:] in spatial:
            if not self.overlapping:
                raise UserError(
                    f"{mask_path}: a stack of {target.shape[0]} masks {target.shape} for image "
                    f"{image.shape}; use overlapping=True to read overlapping masks"
                )
            return target != 0
        raise UserError(
            f"{mask_path}: annotation shape {target.shape} does not match image "
            f"{image_path.name} of shape {image.shape}"
        )


_WELL_CHANNEL = re.compile(r"(?:^|_)([A-P]\d{2})_(w\d+)(?:_|$)")
_GROUND_TRUTH = re.compile(r"^([A-P]\d{2})_(\d+)_ground_truth$")
_BBBC010_DIRS = {
    "images": ("images", "BBBC010_v2_images"),
    "masks": ("masks", "BBBC010_v1_foreground_eachworm"),
}


def _find_dir(root: Path, kind: str) -> Path:
    for name in _BBBC010_DIRS[kind]:
        if (root / name).is_dir():
            return root / name
    raise UserError(f"{root}: no {' or '.join(repr(n) for n in _BBBC010_DIRS[kind])} folder")


def load_bbbc010(
    root: str | os.PathLike, channel: str = "w1"
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Load a local copy of BBBC010 (C. elegans, one binary mask per worm).

    Expected layout (the archive folder names ``BBBC010_v2_images`` and
    ``BBBC010_v1_foreground_eachworm`` are accepted too)::

        root/images/<...>_A01_w1_<...>.tif      one image per well and channel
        root/masks/A01_01_ground_truth.png      one binary PNG per worm

    Parameters
    ----------
    root : path-like
        Data set folder.
    channel : str
        Channel token of the images to load (``"w1"`` bright field, ``"w2"`` GFP).

    Returns
    -------
    wells : list of (str, ndarray, ndarray)
        ``(well, image, masks)`` per well sorted by well id, with the image as stored and
        ``masks`` a boolean ``(N, Y, X)`` stack ordered by worm number.

    Raises
    ------
    ValueError
        If a folder is missing, no image of ``channel`` is found, a well has two images or no
        ground truth, or a mask's shape differs from its image's.

    Examples
    --------
    >>> wells = load_bbbc010("BBBC010")  # doctest: +SKIP
    >>> well, image, masks = wells[0]  # doctest: +SKIP
    """
    root = Path(root)
    image_dir, mask_dir = _find_dir(root, "images"), _find_dir(root, "masks")
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        match = _WELL_CHANNEL.search(path.stem)
        if not path.is_file() or path.suffix.lower() not in (".tif", ".tiff") or match is None:
            continue
        well, chan = match.groups()
        if chan != channel:
            continue
        if well in images:
            raise UserError(
                f"{image_dir}: two {channel} images for well {well}: "
                f"{images[well].name}, {path.name}"
            )
        images[well] = path
    if not images:
        raise UserError(
            f"{image_dir}: no BBBC010 images of channel {channel!r} "
            f"(like '..._A01_{channel}_....tif')"
        )
    truth: dict[str, list[tuple[int, Path]]] = {}
    for path in mask_dir.iterdir():
        match = _GROUND_TRUTH.match(path.stem)
        if path.is_file() and path.suffix.lower() == ".png" and match is not None:
            truth.setdefault(match.group(1), []).append((int(match.group(2)), path))
    missing = sorted(well for well in images if well not in truth)
    if missing:
        raise UserError(
            f"{mask_dir}: no ground truth ('<WELL>_<k>_ground_truth.png') "
            f"for wells {', '.join(missing)}"
        )

    wells = []
    for well in sorted(images):
        image = read_image(images[well])
        masks = []
        for _, path in sorted(truth[well]):
            mask = read_image(path)
            mask = mask[..., 0] if mask.ndim == 3 else mask
            if mask.shape != image.shape[:2]:
                raise UserError(
                    f"{path}: mask shape {mask.shape} differs from image "
                    f"{images[well].name} {image.shape}"
                )
            masks.append(mask != 0)
        wells.append((well, image, np.stack(masks)))
    return wells
