"""The state the assembly steps share: the geometry, the prepared inputs and the consensus.

Both the CPU steps (:mod:`.assembly`) and the CUDA host code (``_cuda_kernels.py``) read
and build these, so they live below both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .candidates import CandidatePatches
from .params import AssemblyParams

#: pixel rows per band of the consensus pass (fixed, so that the float64 score sums do not
#: depend on the number of threads)
BAND_ROWS = 16


# --------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class Geometry:
    """Image and patch geometry, everything lifted to 3D (a 2D image has Z = 1)."""

    shape: tuple[int, int, int]  # image shape (Z, Y, X)
    patchshape: tuple[int, int, int]
    ndim: int  # 2 or 3: the caller's dimensionality

    @property
    def r(self) -> np.ndarray:
        return np.array([p // 2 for p in self.patchshape], np.int64)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        r = self.r
        return tuple(int(s + 2 * q) for s, q in zip(self.shape, r))

    @property
    def offsets(self) -> np.ndarray:
        """(P, 3) patch offsets in C order."""
        grid = np.indices(self.patchshape).reshape(3, -1).T
        return np.ascontiguousarray(grid - self.r, dtype=np.int64)

    @property
    def fullshape(self) -> np.ndarray:
        """Shape of the grid of pair offsets d in [-2r, 2r]."""
        return 4 * self.r + 1

    @property
    def n_columns(self) -> int:
        return int(np.prod(self.fullshape)) // 2

    def pad(self, arr: np.ndarray, value=0) -> np.ndarray:
        r = self.r
        return np.pad(arr.reshape(self.shape), [(q, q) for q in r], constant_values=value)

    def unpad(self, arr: np.ndarray) -> np.ndarray:
        r = self.r
        sl = tuple(slice(q, q + s) for q, s in zip(r, self.shape))
        out = arr[(Ellipsis,) + sl]
        return out.reshape(arr.shape[: arr.ndim - 3] + self.shape[3 - self.ndim:])


def _geometry(shape: tuple[int, ...], patchshape: tuple[int, ...]) -> Geometry:
    if len(shape) == 2:
        return Geometry((1,) + tuple(shape), (1,) + tuple(patchshape), 2)
    return Geometry(tuple(shape), tuple(patchshape), 3)


@dataclasses.dataclass
class Consensus:
    """Mean pairwise votes C(u, v) of every voting pixel with its neighbours.

    ``values[vidx[u], col(v - u)]`` holds C(u, v) for u before v in raster order (NaN when
    the pair received no vote). ``scores`` and ``n_high`` hold the
    score and |H_c| of every candidate patch (step 2), in the order the candidates were given.
    ``device`` says which kernels computed them: ``"cpu"`` or ``"cuda"``.

    In fast mode (``stride > 1``) the consensus lives on the stride grid: ``vidx`` and
    ``geometry`` are those of the grid problem (:meth:`Prepared.on_grid`), and
    :meth:`value` / :meth:`to_dict` take and give coordinates of the image, where pairs
    off the grid are undefined.
    """

    values: np.ndarray  # (n_voting, n_columns) float32, NaN where undefined
    vidx: np.ndarray  # padded int32 row index map
    geometry: Geometry
    scores: np.ndarray  # (n_candidates,) patch scores, in the order of the candidates given
    n_high: np.ndarray  # (n_candidates,) |H_c|
    device: str = "cpu"  # where values and scores were computed
    stride: int = 1  # the grid the consensus lives on (the fast mode's stride, else 1)
    image_shape: tuple | None = None  # the image's (Z, Y, X) when stride > 1

    def value(self, u, v) -> float:
        """C(u, v) for two pixel coordinates, NaN if undefined."""
        g = self.geometry
        if self.stride > 1:
            if any(int(q) % self.stride for q in tuple(u) + tuple(v)):
                return float("nan")
            u = tuple(int(q) // self.stride for q in u)
            v = tuple(int(q) // self.stride for q in v)
        u3 = np.array(((0,) if g.ndim == 2 else ()) + tuple(u), np.int64)
        v3 = np.array(((0,) if g.ndim == 2 else ()) + tuple(v), np.int64)
        if np.ravel_multi_index(tuple(u3), g.shape) > np.ravel_multi_index(tuple(v3), g.shape):
            u3, v3 = v3, u3
        d = v3 - u3
        if np.any(np.abs(d) > 2 * g.r) or not d.any():
            return float("nan")
        row = self.vidx[tuple(u3 + g.r)]
        col = int(np.ravel_multi_index(tuple(d + 2 * g.r), tuple(g.fullshape))) - g.n_columns - 1
        if row < 0:
            return float("nan")
        return float(self.values[row, col])

    def to_dict(self) -> dict[tuple[int, int], float]:
        """All defined values keyed by (flat index of u, flat index of v) in the image,
        u < v (slow)."""
        g = self.geometry
        pix = np.argwhere(self.vidx >= 0)
        rows = self.vidx[tuple(pix.T)]
        grid = np.indices(tuple(g.fullshape)).reshape(3, -1).T - 2 * g.r
        grid = grid[g.n_columns + 1:]
        step = np.array([1 if (g.ndim == 2 and a == 0) else self.stride for a in range(3)])
        shape = self.image_shape if self.stride > 1 else g.shape
        out = {}
        for p, row in zip(pix, rows):
            cols = np.nonzero(~np.isnan(self.values[row]))[0]
            u = p - g.r
            for col in cols:
                v = u + grid[col]
                out[(int(np.ravel_multi_index(tuple(u * step), shape)),
                     int(np.ravel_multi_index(tuple(v * step), shape)))] = float(self.values[row, col])
        return out


class Prepared:
    """The state every assembly step reads, built once per assembly (by :func:`prepare`).

    Parameters
    ----------
    patches : ndarray, float32, C-contiguous, shape (P, [Z,] Y, X), or CandidatePatches
        Validated patch probabilities.
    cls : ndarray, int8, shape ([Z,] Y, X)
        Foreground classes (:func:`foreground_classes`).
    params : AssemblyParams

    Attributes
    ----------
    geo : Geometry
        Image and patch geometry (as 3D; padded by the patch radius).
    patches : ndarray, shape (P, n_columns)
        The patches, one column per pixel (dense input) or per pixel of the
        :class:`CandidatePatches`; :meth:`columns_of` gives the column of a pixel.
    vmask, fgmask : ndarray of uint8
        Padded voting (class 1) and foreground (class >= 1) masks.
    vidx : ndarray of int32
        Padded index of each voting pixel among the voting pixels (-1 elsewhere).
    n_voting : int
        Voting pixels.
    spatial : tuple of int
        The image's space shape.
    """

    def __init__(self, patches, cls, params: AssemblyParams):
        geo = _geometry(cls.shape, params.patchshape)
        self.geo = geo
        self.spatial = tuple(int(n) for n in cls.shape)
        self.params = params
        self._compact = patches if isinstance(patches, CandidatePatches) else None
        self._grid = None  # the fast mode's grid problem, once built (on_grid)
        self.patches = (patches.values if self._compact is not None
                        else patches.reshape(patches.shape[0], -1))
        self.classes = cls
        cls3 = cls.reshape(geo.shape)
        self.vmask = geo.pad((cls3 == 1).astype(np.uint8))
        self.fgmask = geo.pad((cls3 >= 1).astype(np.uint8))
        vflat = np.flatnonzero(cls3 == 1)
        vidx = np.full(geo.shape, -1, np.int32)
        vidx.reshape(-1)[vflat] = np.arange(vflat.size, dtype=np.int32)
        self.vidx = geo.pad(vidx, value=-1)
        self.n_voting = int(vflat.size)
        self.offs = geo.offsets
        self.r = geo.r
        self.pshape = np.array(geo.patchshape, np.int64)
        self.fshape = np.ascontiguousarray(geo.fullshape, np.int64)
        self.th = np.float32(params.patch_threshold)
        self.bg = np.float32(params.background_threshold)

    @property
    def stride(self) -> int:
        """The fast mode's grid spacing (1 in exact mode): :attr:`AssemblyParams.grid`."""
        return self.params.grid

    def on_grid(self, flat: np.ndarray) -> tuple["Prepared", np.ndarray]:
        """The fast mode's problem on its grid, for the patches of the pixels ``flat``.

        Fast mode takes its candidate centres, and the pixels of their H and L sets, on the
        grid of spacing ``s`` (:attr:`AssemblyParams.grid`) (every coordinate a multiple of ``s``). That is an
        exact-mode problem on the image subsampled by ``s``, with the patch subsampled the
        same way (offsets ``s * j``, ``|j| <= r // s``): pairs of pixels on the grid only, so
        the consensus costs about ``s ** (2 * ndim)`` times less than with every pixel of a
        box. Returns the grid problem's :class:`Prepared` (exact mode) and the grid flat
        index of every pixel of ``flat`` (all on the grid, each a candidate), in that order.
        """
        s = self.stride
        ndim = self.geo.ndim
        spatial = self.spatial
        coords = np.unravel_index(np.asarray(flat, np.int64), spatial)
        if any(np.any(c % s) for c in coords):
            raise ValueError("fast mode: every candidate centre lies on the stride grid")
        grid_spatial = tuple(-(-n // s) for n in spatial)
        grid_flat = np.ravel_multi_index(tuple(c // s for c in coords), grid_spatial)
        # the steps ask for the candidates, then for subsets of them: one grid problem
        cached = self._grid
        if cached is not None and cached.holds(grid_flat):
            return cached, grid_flat
        half = [(p // 2) // s for p in self.params.patchshape]
        picks = [np.arange(-h, h + 1) * s + p // 2 for h, p in zip(half, self.params.patchshape)]
        channels = np.ravel_multi_index(np.ix_(*picks), self.params.patchshape).reshape(-1)
        order = np.argsort(grid_flat, kind="stable")
        values = self.patches[np.ix_(channels, self.columns_of(np.asarray(flat)[order]))]
        patches = CandidatePatches(values, grid_flat[order], grid_spatial)
        cls = self.classes[(slice(None, None, s),) * ndim]
        params = dataclasses.replace(self.params, patchshape=tuple(2 * h + 1 for h in half),
                                     fast=False)
        self._grid = Prepared(patches, cls, params)
        return self._grid, grid_flat

    def holds(self, flat: np.ndarray) -> bool:
        """Whether :attr:`patches` has the patch of every pixel of ``flat``."""
        return self._compact is None or self._compact.holds(flat)

    def columns_of(self, flat: np.ndarray) -> np.ndarray:
        """Column of :attr:`patches` holding the patch of each pixel of ``flat`` (int64)."""
        if self._compact is None:
            return np.ascontiguousarray(flat, np.int64)
        return np.ascontiguousarray(self._compact.columns_of(flat), np.int64)

    def dense_columns(self, f0: int, f1: int) -> np.ndarray:
        """The patches of the pixels with flat index f0 .. f1 - 1, ``(P, f1 - f0)`` float32
        (zero where the compact input holds none)."""
        if self._compact is None:
            return np.ascontiguousarray(self.patches[:, f0:f1])
        flat = self._compact.flat
        j0, j1 = np.searchsorted(flat, [f0, f1])
        out = np.zeros((self.patches.shape[0], f1 - f0), np.float32)
        out[:, flat[j0:j1] - f0] = self.patches[:, j0:j1]
        return out

    def centres_of(self, flat: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.stack(np.unravel_index(flat, self.geo.shape), axis=1),
                                    dtype=np.int64)
