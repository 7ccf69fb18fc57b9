"""Instances as an ImageJ ROI set: what Fiji's ROI Manager opens.

Each instance becomes one ROI (``roifile``), named by its id: its outline traced on the
pixel edges (sub-pixel vertices, ImageJ's coordinates: pixel ``(x, y)`` covers
``[x, x + 1) x [y, y + 1)``), so that filling it gives back the instance's pixels up to the
corners that the tracing cuts. One outline is a polygon ROI; an instance in several parts
or with holes (a coiled worm around its own loop) is a composite (shape) ROI of all its
outlines, filled even-odd. ROIs may overlap, so overlapping instances (an
``(N, Y, X)`` mask stack) are a set like any other. A 3D instance gives one ROI per slice it
appears in, named ``<id>-z<slice>`` with that slice as its position.

>>> import numpy as np
>>> labels = np.zeros((20, 30), np.int32)
>>> labels[2:12, 3:15] = 1
>>> labels[8:18, 12:28] = 2
>>> [roi.name for roi in instance_rois(labels)]
['1', '2']
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError


def _outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Every boundary of a 2D mask (outer ones and those of holes) as ``(n, 2)`` x, y
    vertices in the mask's own frame, the longest first."""
    from skimage.measure import find_contours

    padded = np.pad(mask, 1).astype(np.float32)
    # the points lie between pixel centres of the padded mask; ImageJ's corners are +0.5
    outlines = [np.ascontiguousarray((c - 1 + 0.5)[:-1, ::-1])
                for c in find_contours(padded, 0.5) if len(c) > 3]
    return sorted(outlines, key=len, reverse=True)


def _roi(outlines: list[np.ndarray], name: str):
    """A polygon ROI for one outline; a composite (shape) ROI, filled even-odd, for several
    (an instance in parts, or with holes: a coiled worm around its own loop)."""
    from roifile import ROI_TYPE, ImagejRoi

    if len(outlines) == 1:
        return ImagejRoi.frompoints(outlines[0], name=name)
    path = []
    for points in outlines:  # moveto the first vertex, lineto the others, close
        path += [0.0, *points[0]]
        for x, y in points[1:]:
            path += [1.0, x, y]
        path.append(4.0)
    allpoints = np.concatenate(outlines)
    roi = ImagejRoi(roitype=ROI_TYPE.RECT, name=name)
    roi.left, roi.top = (int(np.floor(v)) for v in allpoints.min(axis=0))
    roi.right, roi.bottom = (int(np.ceil(v)) for v in allpoints.max(axis=0))
    roi.multi_coordinates = np.asarray(path, np.float32)
    roi.shape_roi_size = len(path)
    return roi


def _instances(labels: np.ndarray, overlapping: bool | None):
    """``(name, mask cropped to its box, box start)`` of every instance."""
    labels = np.asarray(labels)
    if overlapping is None:
        overlapping = labels.dtype == bool and labels.ndim >= 3
    if overlapping:
        if labels.ndim not in (3, 4):
            raise UserError(f"overlapping instances are an (N, [Z,] Y, X) mask stack, got "
                            f"shape {labels.shape}")
        for i, mask in enumerate(labels):
            where = np.nonzero(mask)
            if where[0].size:
                box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
                yield str(i + 1), np.asarray(mask[box], bool), [b.start for b in box]
        return
    if labels.ndim not in (2, 3) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"a label image is a ([Z,] Y, X) integer array, got {labels.dtype} "
                        f"of shape {labels.shape}")
    from scipy.ndimage import find_objects

    for i, box in enumerate(find_objects(labels)):
        if box is not None:
            yield str(i + 1), labels[box] == i + 1, [b.start for b in box]


def instance_rois(labels: np.ndarray, *, overlapping: bool | None = None) -> list:
    """One ROI per instance (per slice in 3D), named by instance id: a polygon, or a
    composite ROI for an instance with holes or in parts.

    Parameters
    ----------
    labels : ndarray
        A ``([Z,] Y, X)`` label image, or with ``overlapping`` an ``(N, [Z,] Y, X)`` boolean
        mask stack (the default for a boolean array of 3 or more axes).

    Returns
    -------
    list of roifile.ImagejRoi
    """
    rois = []
    for name, mask, start in _instances(labels, overlapping):
        slices = [(name, mask, None)] if mask.ndim == 2 else [
            (f"{name}-z{start[0] + z + 1}", mask[z], start[0] + z) for z in range(len(mask))]
        for roi_name, plane, z in slices:
            outlines = [o + np.array([start[-1], start[-2]]) for o in _outlines(plane)]
            if not outlines:
                continue
            roi = _roi(outlines, roi_name)
            if z is not None:
                roi.position = z + 1  # ImageJ slices count from 1
                roi.z_position = z + 1
            rois.append(roi)
    return rois


def write_rois(path: str | os.PathLike, labels: np.ndarray, *,
               overlapping: bool | None = None) -> Path:
    """Write the ROI set of :func:`instance_rois` as a ``.zip`` (Fiji: ROI Manager >
    More > Open, or drag it onto Fiji). The file is written whole or not at all."""
    from roifile import roiwrite

    path = Path(path)
    rois = instance_rois(labels, overlapping=overlapping)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".zip", dir=path.parent)
    os.close(handle)
    try:
        os.unlink(tmp)  # roiwrite appends to an existing zip
        if rois:
            roiwrite(tmp, rois, mode="w")
        else:  # an empty ROI set: an empty zip
            import zipfile

            zipfile.ZipFile(tmp, "w").close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["instance_rois", "write_rois"]
