"""Arrays between napari layers and ppp-zoo, without napari: importable and tested anywhere.

* :func:`label_planes`: a stack of overlapping instance masks as the fewest label images
  in which no two instances share a pixel (one napari Labels layer each).
* :func:`check_training_pair` and :func:`write_training_folder`: an image layer and its
  Labels layer as the ``images/`` + ``masks/`` folder that ``[data] source = "folder"``
  trains on, with a validation strip split off.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io import write_image, write_labels

MIN_TRAIN_COLUMNS = 32
"""Columns (X) that the training part of a split image keeps at least."""
MIN_VAL_COLUMNS = 16
"""Columns (X) of the validation strip at least."""


def label_planes(masks: np.ndarray) -> np.ndarray:
    """Pack overlapping instance masks into label images without overlaps.

    Instance ``i`` (mask ``masks[i]``) keeps the id ``i + 1`` and is written whole into the
    first plane where none of its pixels is taken yet, so every plane is an ordinary label
    image and every instance appears entirely in exactly one plane. There is one plane for
    masks without any overlap, and never more planes than one plus the largest number of
    other instances that one instance overlaps (two for worms that cross in pairs).

    Parameters
    ----------
    masks : ndarray of bool, shape (N, [Z,] Y, X)
        One mask per instance.

    Returns
    -------
    planes : ndarray of int32, shape (K, [Z,] Y, X)
        ``K >= 1`` label images (``K = 1`` and all zero for ``N = 0``).

    Raises
    ------
    ValueError
        If ``masks`` is not a stack of 2D or 3D boolean (or 0/1) masks.

    Examples
    --------
    >>> masks = np.zeros((3, 1, 5), bool)
    >>> masks[0, 0, :3] = masks[1, 0, 2:] = masks[2, 0, 4] = True
    >>> label_planes(masks)[:, 0]
    array([[1, 1, 1, 0, 3],
           [0, 0, 2, 2, 2]], dtype=int32)
    """
    masks = _validate_masks(masks)
    planes = [np.zeros(masks.shape[1:], np.int32)]
    for i, mask in enumerate(masks):
        for plane in planes:
            if not plane[mask].any():
                break
        else:
            plane = np.zeros(masks.shape[1:], np.int32)
            planes.append(plane)
        plane[mask] = i + 1
    return np.stack(planes)


def _validate_masks(masks) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim not in (3, 4):
        raise UserError(f"expected a (N, [Z,] Y, X) mask stack, got shape {masks.shape}")
    if masks.dtype != bool:
        if masks.dtype.kind not in "iu" or (masks.size and masks.max() > 1) or (
                masks.size and masks.min() < 0):
            raise UserError(f"expected boolean or 0/1 masks, got dtype {masks.dtype}")
        masks = masks != 0
    return masks


def image_space_shape(image: np.ndarray, rgb: bool = False) -> tuple[int, ...]:
    """The space shape of an image layer's data (a trailing RGB(A) axis left out)."""
    return tuple(image.shape[:-1] if rgb else image.shape)


def check_training_pair(image: np.ndarray, labels: np.ndarray, ndim: int, *,
                        rgb: bool = False) -> None:
    """Check that an image and its labels can be trained on by a model of ``ndim`` axes.

    Raises
    ------
    ValueError
        One sentence: labels of another shape, an image that is not ``ndim``-D, no
        instances, or an image too narrow to split off a validation strip.

    Examples
    --------
    >>> check_training_pair(np.zeros((64, 64)), np.zeros((64, 60), int), 2)
    Traceback (most recent call last):
    ...
    ppp_zoo.errors.UserError: the labels have shape (64, 60) but the image has shape (64, 64)
    """
    space = image_space_shape(image, rgb)
    if tuple(labels.shape) != space:
        raise UserError(f"the labels have shape {tuple(labels.shape)} but the image has "
                         f"shape {space}")
    if len(space) != ndim:
        raise UserError(f"this configuration trains a {ndim}D model, the image of shape "
                         f"{space} is {len(space)}D")
    if labels.dtype.kind not in "biu":
        raise UserError(f"the labels must be integers, got dtype {labels.dtype}")
    if not labels.any():
        raise UserError("the labels hold no instance to train on")
    if space[-1] < MIN_TRAIN_COLUMNS + MIN_VAL_COLUMNS:
        raise UserError(f"the image is {space[-1]} pixels wide: training needs at least "
                         f"{MIN_TRAIN_COLUMNS + MIN_VAL_COLUMNS} to keep a validation strip")


def write_training_folder(image: np.ndarray, labels: np.ndarray, folder: str | os.PathLike,
                          *, ndim: int, rgb: bool = False,
                          val_fraction: float = 0.25) -> Path:
    """Write an image and its label image as a training folder with a validation strip.

    The last ``val_fraction`` of the columns (X; at least :data:`MIN_VAL_COLUMNS`) become
    ``images/val.tif`` and ``masks/val.tif``, the columns before them ``images/train.tif``
    and ``masks/train.tif``; training on ``folder`` with ``val_fraction = 0.5`` then holds
    out exactly the strip (the folder reader takes the last files by name).

    Returns
    -------
    Path
        ``folder``.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    check_training_pair(image, labels, ndim, rgb=rgb)
    width = image_space_shape(image, rgb)[-1]
    val = min(max(MIN_VAL_COLUMNS, round(width * val_fraction)), width - MIN_TRAIN_COLUMNS)
    cut = width - val
    x_axis = ndim - 1
    folder = Path(folder)
    for name, sl in (("train", slice(None, cut)), ("val", slice(cut, None))):
        index = (slice(None),) * x_axis + (sl,)
        write_image(folder / "images" / f"{name}.tif", np.ascontiguousarray(image[index]))
        write_labels(folder / "masks" / f"{name}.tif", np.ascontiguousarray(labels[index]))
    return folder
