"""Parameters of the PatchPerPix instance assembly."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, get_args

from .errors import PostprocessError

Partition = Literal["cc", "mws"]
PatchShape = tuple[int, ...]


def parse_shape(text: str | Any) -> PatchShape:
    """Parse a shape written ``25x25`` or ``9x9x9`` (or a sequence of ints)."""
    if isinstance(text, str):
        try:
            shape = tuple(int(s) for s in text.lower().split("x"))
        except ValueError:
            raise PostprocessError(f"cannot read shape {text!r}: write it like 25x25 or 9x9x9") from None
    else:
        shape = tuple(int(s) for s in text)
    return shape


@dataclasses.dataclass(frozen=True)
class AssemblyParams:
    """All parameters of the instance assembly, with the paper's defaults.

    Parameters
    ----------
    patchshape : tuple of int
        Shape of the local shape patch, odd on every axis (2D: ``(25, 25)`` nuclei,
        ``(41, 41)`` worms; 3D: ``(9, 9, 9)``).
    patch_threshold : float
        TH: a patch value above it says "same instance as the centre". The background
        threshold BG is ``1 - TH`` (or ``TH`` when ``TH < 0.5``). Paper: 0.9 in 2D, 0.5 in 3D.
    fc_threshold : float
        Patch values above it count as covered in the foreground cover (paper: 0.5 worms and
        3D nuclei, 0.9 DSB nuclei).
    partition : {"cc", "mws"}
        Connected components over positive edges, or mutex watershed.
    numinst_thresholds : (float, float)
        ``(t1, t2)``: class 2 (overlap) where ``numinst[2] > t2``, else class 1 where
        ``numinst[1] > t1``.
    min_size : int
        Instances with fewer pixels are removed.
    crop_to_fg : bool
        Paint instances only on foreground pixels.
    overlapping : bool
        Output one mask per instance ``(N, [Z,] Y, X)`` instead of a label image, so that
        overlap pixels belong to every instance covering them.
    fast : bool
        Vote, score and weigh edges on a grid of spacing ``fast_stride``: candidate centres
        and the pixels of their H and L sets on the grid only (the exact assembly of the
        image and patches subsampled by the stride: about ``fast_stride ** (2 * ndim)``
        times less work for the votes and memory for the consensus); the cover first
        covers the grid, then the pixels between; the instances are painted at full
        resolution.
    fast_stride : int
        Grid spacing of the fast mode; a stride larger than the patch radius on an axis of
        more than one pixel is reduced to that radius (:attr:`grid`), so that the grid
        still holds pixel pairs in every direction (3x3x3 patches: the exact mode).
    """

    patchshape: PatchShape
    patch_threshold: float = 0.9
    fc_threshold: float = 0.5
    partition: Partition = "cc"
    numinst_thresholds: tuple[float, float] = (0.9, 0.1)
    min_size: int = 0
    crop_to_fg: bool = True
    overlapping: bool = False
    fast: bool = False
    fast_stride: int = 2

    def __post_init__(self) -> None:
        shape = parse_shape(self.patchshape)
        object.__setattr__(self, "patchshape", shape)
        object.__setattr__(
            self, "numinst_thresholds", tuple(float(t) for t in self.numinst_thresholds)
        )
        _validate_params(self)

    @property
    def ndim(self) -> int:
        return len(self.patchshape)

    @property
    def grid(self) -> int:
        """The spacing of the grid the assembly votes on: ``fast_stride`` in fast mode, at
        most the patch radius on every axis of more than one pixel; 1 in exact mode."""
        if not self.fast:
            return 1
        radii = [s // 2 for s in self.patchshape if s > 1]
        return max(1, min([int(self.fast_stride)] + radii))

    @property
    def background_threshold(self) -> float:
        th = self.patch_threshold
        return 1.0 - th if th >= 0.5 else th

    def replace(self, **changes: Any) -> "AssemblyParams":
        """Return a copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patchshape"] = list(self.patchshape)
        d["numinst_thresholds"] = list(self.numinst_thresholds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AssemblyParams":
        """Build from a mapping (e.g. a model package's ``config``); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PostprocessError(f"unknown assembly parameter(s): {', '.join(unknown)}")
        return cls(**dict(d))


def _validate_params(p: AssemblyParams) -> None:
    shape = p.patchshape
    if len(shape) not in (2, 3):
        raise PostprocessError(f"patchshape must have 2 or 3 entries, got {shape}")
    if any(s < 1 or s % 2 == 0 for s in shape):
        raise PostprocessError(f"patchshape entries must be odd and positive, got {shape}")
    if not 0.0 < p.patch_threshold < 1.0:
        raise PostprocessError(f"patch_threshold must be in (0, 1), got {p.patch_threshold}")
    if not 0.0 < p.fc_threshold < 1.0:
        raise PostprocessError(f"fc_threshold must be in (0, 1), got {p.fc_threshold}")
    if p.partition not in get_args(Partition):
        raise PostprocessError(f"partition must be one of {get_args(Partition)}, got {p.partition!r}")
    if len(p.numinst_thresholds) != 2 or not all(0 <= t < 1 for t in p.numinst_thresholds):
        raise PostprocessError(f"numinst_thresholds must be two values in [0, 1), got {p.numinst_thresholds}")
    if p.min_size < 0:
        raise PostprocessError(f"min_size must be >= 0, got {p.min_size}")
    if p.fast_stride < 1:
        raise PostprocessError(f"fast_stride must be >= 1, got {p.fast_stride}")
