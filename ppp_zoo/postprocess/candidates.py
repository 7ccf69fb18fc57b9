"""Patches of some pixels only: the compact input of the assembly.

The assembly reads the patch of a pixel only where that pixel is a candidate centre (a
numinst class-1 pixel, on the stride grid in fast mode). A dense ``(P, [Z,] Y, X)`` array
spends ``P`` floats on every other pixel too: for a 1024x1024 image with 17x17 patches in
fast mode that is 1.2 GB, of which the assembly reads 5 %. :class:`CandidatePatches` holds
the read columns alone, ``(P, n)``, with the flat (C-order) index of each column's pixel;
:func:`~ppp_zoo.postprocess.assemble` takes it in place of the dense array and gives the
same labels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import PostprocessError


class CandidatePatches:
    """The patches ``(P, n)`` of ``n`` pixels of an image of shape ``spatial``.

    Parameters
    ----------
    values : ndarray, shape (P, n)
        Patch probabilities, column ``j`` the patch centred at pixel ``flat[j]``.
    flat : ndarray of int, shape (n,)
        Strictly increasing flat (C-order) pixel indices into ``spatial``.
    spatial : tuple of int
        The image's ([Z,] Y, X) shape.

    Attributes
    ----------
    shape : tuple of int
        ``(P,) + spatial``: the shape of the dense array it stands for.

    Examples
    --------
    >>> import numpy as np
    >>> dense = np.zeros((9, 4, 5), np.float32)
    >>> dense[:, 1, 2] = 0.5
    >>> cp = CandidatePatches.from_dense(dense, np.array([7]))
    >>> cp.shape, bool((cp.dense() == dense).all())
    ((9, 4, 5), True)
    """

    def __init__(self, values: np.ndarray, flat: np.ndarray, spatial: Sequence[int]):
        values = np.ascontiguousarray(values, dtype=np.float32)
        flat = np.ascontiguousarray(flat, dtype=np.int64)
        spatial = tuple(int(s) for s in spatial)
        if values.ndim != 2 or flat.ndim != 1 or values.shape[1] != flat.size:
            raise PostprocessError(f"values must have shape (P, n) with n = len(flat) = {flat.size}, "
                             f"got {values.shape}")
        if flat.size and (flat[0] < 0 or flat[-1] >= int(np.prod(spatial))
                          or np.any(np.diff(flat) <= 0)):
            raise PostprocessError(f"flat must be strictly increasing pixel indices into {spatial}")
        self.values, self.flat, self.spatial = values, flat, spatial
        self.shape = (values.shape[0],) + spatial
        self.ndim = len(self.shape)
        self.dtype = values.dtype

    @classmethod
    def from_dense(cls, patches: np.ndarray, flat: np.ndarray) -> "CandidatePatches":
        """The columns ``flat`` (sorted flat pixel indices) of a dense ``(P, ...)`` array."""
        flat = np.asarray(flat, np.int64)
        values = np.asarray(patches).reshape(patches.shape[0], -1)[:, flat]
        return cls(values, flat, patches.shape[1:])

    def dense(self) -> np.ndarray:
        """The dense ``(P, [Z,] Y, X)`` float32 array, 0 at pixels without a patch."""
        out = np.zeros((self.shape[0], int(np.prod(self.spatial))), np.float32)
        out[:, self.flat] = self.values
        return out.reshape(self.shape)

    def __getitem__(self, key) -> "CandidatePatches":
        """The patches of a box of the image: ``cp[:, y0:y1, x0:x1]`` (unit-step slices over
        the space axes, the first axis whole), indexed in the box."""
        key = key if isinstance(key, tuple) else (key,)
        if key[0] != slice(None) or len(key) > self.ndim:
            raise IndexError("candidate patches are sliced over space only")
        box = []
        for axis, n in enumerate(self.spatial):
            s = key[axis + 1] if axis + 1 < len(key) else slice(None)
            if not isinstance(s, slice) or s.step not in (None, 1):
                raise IndexError("candidate patches take unit-step slices only")
            box.append(range(n)[s])
        coords = np.unravel_index(self.flat, self.spatial)
        inside = np.ones(self.flat.size, bool)
        for c, b in zip(coords, box):
            inside &= (c >= b.start) & (c < b.stop)
        local = tuple(c[inside] - b.start for c, b in zip(coords, box))
        shape = tuple(len(b) for b in box)
        flat = np.ravel_multi_index(local, shape) if shape and min(shape) > 0 else \
            np.zeros(0, np.int64)
        return CandidatePatches(self.values[:, inside], flat, shape)

    def _lookup(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Column of each pixel of ``flat`` and whether it has none."""
        flat = np.asarray(flat, np.int64)
        pos = np.searchsorted(self.flat, flat)
        missing = pos >= self.flat.size
        missing[~missing] = self.flat[pos[~missing]] != flat[~missing]
        return pos, missing

    def holds(self, flat: np.ndarray) -> bool:
        """Whether every pixel of ``flat`` has its patch here."""
        return not self._lookup(flat)[1].any()

    def columns_of(self, flat: np.ndarray) -> np.ndarray:
        """Column of each pixel of ``flat``; ValueError when one of them has no patch."""
        pos, missing = self._lookup(flat)
        if missing.any():
            raise PostprocessError(f"the candidate patches lack {int(missing.sum())} of the "
                             f"{missing.size} candidate centres of these parameters: make them "
                             "from the same numinst with the same assembly parameters, for "
                             "this very image or block (in fast mode the stride grid starts "
                             "at its corner)")
        return pos

    def __repr__(self) -> str:
        return (f"CandidatePatches({self.values.shape[1]} of "
                f"{int(np.prod(self.spatial))} pixels, shape={self.shape})")
