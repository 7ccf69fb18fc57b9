"""Step 0 of the assembly: the foreground classes and the candidate centres.

Shared by the assembly and by the decoding (:mod:`.decode` decodes the patches of these
pixels only).
"""

from __future__ import annotations

import numpy as np

from .params import AssemblyParams


def foreground_classes(numinst, patches, params: AssemblyParams) -> np.ndarray:
    """Per-pixel class 0 (background), 1 (one instance), 2 (overlap), int8, image shape."""
    if numinst is None:
        centre = patches[patches.shape[0] // 2]
        return (centre > params.patch_threshold).astype(np.int8)
    t1, t2 = params.numinst_thresholds
    cls = np.zeros(numinst.shape[1:], np.int8)
    cls[numinst[1] > t1] = 1
    cls[numinst[2] > t2] = 2
    return cls


def candidate_mask(cls: np.ndarray, params: AssemblyParams) -> np.ndarray:
    """Candidate patch centres: voting pixels (class 1), on the stride grid in fast mode."""
    mask = cls == 1
    if params.grid > 1:
        grid = np.zeros_like(mask)
        grid[(slice(None, None, params.grid),) * mask.ndim] = True
        mask &= grid
    return mask
