"""Per-pixel decoding in numpy: network features or codes in, shape patches out.

Two stages, each optional:

- :class:`PatchHead` (packages of format 2): the network's last 1x1 convolution, applied to
  the U-Net features ``(F, ...)`` a model package outputs: ``sigmoid(W f + b)`` gives the
  patch probabilities (``ppp``) or the code probabilities (``ppp+dec``).
- :class:`Decoder` (``ppp+dec``): the maths of :class:`ppp_zoo.model.PatchDecoder` (which
  this module does not import): a pixel's code vector of ``C = prod(code_shape)`` values is read in C order as
``c0`` channels on a ``g_1 x ... x g_ndim`` grid; each of ``L`` levels upsamples x2 (nearest)
and applies two 3x3[x3] convolutions (zero padding 1) each followed by a ReLU; a final 1x1
convolution gives one channel, the ``g * 2**L`` grid is centre-cropped to ``patchshape`` and
a sigmoid turns the logits into patch probabilities, flattened in C order.

Only pixels that vote in the assembly (numinst class 1) are decoded, in chunks whose
activations stay below a memory budget; every other pixel's patch is left at 0, which the
assembly never reads. :func:`decode_candidates` decodes fewer still: the candidate centres
the assembly reads with given parameters (in fast mode a quarter of the class-1 pixels in
2D), into a compact :class:`~ppp_zoo.postprocess.CandidatePatches`.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import re
from typing import Union

import numpy as np
from numba import njit, prange

from . import _portable
from ._threads import parallel_section
from .candidates import CandidatePatches
from .errors import PostprocessError
from .foreground import candidate_mask, foreground_classes
from .params import AssemblyParams

#: bytes of intermediate activations one decoding chunk may use
DEFAULT_MEMORY_BUDGET = 64 * 2**20
_KEY = re.compile(r"^net\.(\d+)\.(weight|bias)$")


@dataclasses.dataclass(frozen=True)
class Decoder:
    """Decoder weights as float32 arrays (see the module docstring).

    Attributes
    ----------
    code_shape : tuple of int
        ``(c0, g_1, ..., g_ndim)``.
    patchshape : tuple of int
        Odd patch shape.
    convs : tuple of (ndarray, ndarray)
        ``(weight (out, in, k, ...), bias (out,))`` of every convolution in order: two per
        level, then the final 1x1 convolution.
    """

    code_shape: tuple[int, ...]
    patchshape: tuple[int, ...]
    convs: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def ndim(self) -> int:
        return len(self.patchshape)

    @property
    def levels(self) -> int:
        return (len(self.convs) - 1) // 2

    @property
    def code_channels(self) -> int:
        return int(np.prod(self.code_shape))

    @property
    def n_patch(self) -> int:
        return int(np.prod(self.patchshape))

    @property
    def in_channels(self) -> int:
        """Channels of the per-pixel input (the code length)."""
        return self.code_channels

    def bytes_per_code(self) -> int:
        """Peak activation bytes of decoding one code (a few buffers of the largest level)."""
        grid = np.asarray(self.code_shape[1:])
        peak = int(np.prod(grid)) * self.code_shape[0]
        for level in range(self.levels):
            n = int(np.prod(grid * 2 ** (level + 1)))
            peak = max(peak, n * int(self.convs[2 * level][0].shape[0]))
        return 4 * 4 * peak  # float32, about four live buffers

    def decode_pixels(self, codes: np.ndarray) -> np.ndarray:
        """Patch probabilities ``(N, P)`` of code probabilities ``(N, C)``."""
        return decode_codes(self, codes)


@dataclasses.dataclass(frozen=True)
class PatchHead:
    """The pointwise head of a format-2 package: features ``(N, F)`` -> patches ``(N, P)``.

    ``sigmoid(features @ weight.T + bias)`` are the patch probabilities (``decoder`` is
    None) or the code probabilities that ``decoder`` turns into patches.

    Attributes
    ----------
    weight : ndarray, float32, shape (K, F)
    bias : ndarray, float32, shape (K,)
    patchshape : tuple of int
    decoder : Decoder or None

    Examples
    --------
    >>> head = PatchHead(np.ones((9, 2), np.float32), np.zeros(9, np.float32), (3, 3))
    >>> head.decode_pixels(np.zeros((4, 2), np.float32)).shape, head.in_channels
    ((4, 9), 2)
    """

    weight: np.ndarray
    bias: np.ndarray
    patchshape: tuple[int, ...]
    decoder: Decoder | None = None

    def __post_init__(self):
        w, b = np.asarray(self.weight), np.asarray(self.bias)
        k = self.decoder.code_channels if self.decoder is not None else \
            int(np.prod(self.patchshape))
        if w.ndim != 2 or w.shape[0] != k or b.shape != (k,):
            raise PostprocessError(f"head weight {w.shape} / bias {b.shape} do not give {k} "
                             f"{'code' if self.decoder is not None else 'patch'} channels")
        if self.decoder is not None and self.decoder.patchshape != tuple(self.patchshape):
            raise PostprocessError(f"decoder patchshape {self.decoder.patchshape} differs from the "
                             f"head's {tuple(self.patchshape)}")

    @property
    def ndim(self) -> int:
        return len(self.patchshape)

    @property
    def in_channels(self) -> int:
        """Feature channels the head reads."""
        return int(self.weight.shape[1])

    @property
    def n_patch(self) -> int:
        return int(np.prod(self.patchshape))

    def bytes_per_code(self) -> int:
        """Peak bytes of decoding one pixel."""
        own = 4 * 2 * (int(self.weight.shape[0]) + self.n_patch)
        return max(own, self.decoder.bytes_per_code()) if self.decoder is not None else own

    def decode_pixels(self, features: np.ndarray) -> np.ndarray:
        """Patch probabilities ``(N, P)`` of features ``(N, F)``."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.in_channels:
            raise PostprocessError(f"features must have shape (N, {self.in_channels}), "
                             f"got {features.shape}")
        probs = np.empty((len(features), len(self.bias)), np.float32)
        with parallel_section():
            _pointwise_sigmoid(np.ascontiguousarray(features),
                               np.ascontiguousarray(np.asarray(self.weight, np.float32).T),
                               np.asarray(self.bias, np.float32), probs)
        return probs if self.decoder is None else decode_codes(self.decoder, probs)


@njit(cache=True, nogil=True, inline="always")
def _sigmoid_row(feature, weight_t, bias, row):
    """``row = sigmoid(bias + sum_j feature[j] * weight_t[j])``, summed over ``j`` in order:
    a pixel's patch does not depend on which other pixels are decoded with it (a BLAS
    product's rounding can change with the number of rows)."""
    one = np.float32(1.0)
    row[:] = bias
    for j in range(feature.shape[0]):
        v = feature[j]
        w = weight_t[j]
        for c in range(row.shape[0]):
            row[c] += v * w[c]
    for c in range(row.shape[0]):
        row[c] = one / (one + np.exp(-row[c]))


@njit(cache=True, parallel=True, nogil=True)
def _pointwise_sigmoid(features, weight_t, bias, out):
    """``out[i]``: the head at the features ``features[i]`` (:func:`_sigmoid_row`)."""
    for i in prange(features.shape[0]):
        _sigmoid_row(features[i], weight_t, bias, out[i])


#: pixels per tile of :func:`_head_at` (decoded into a small buffer, then written out
#: channel by channel)
HEAD_TILE = 16


@njit(cache=True, parallel=True, nogil=True)
def _head_at(features, weight_t, bias, out):
    """``out[:, j]``: the head at the features ``features[:, j]`` (``(F, n)``;
    :func:`_sigmoid_row`), written in the ``(P, n)`` layout of
    :class:`~ppp_zoo.postprocess.CandidatePatches`."""
    n = features.shape[1]
    n_out = out.shape[0]
    for t in prange((n + HEAD_TILE - 1) // HEAD_TILE):
        j0 = t * HEAD_TILE
        m = min(n, j0 + HEAD_TILE) - j0
        buf = np.empty((HEAD_TILE, n_out), np.float32)
        for jj in range(m):
            _sigmoid_row(features[:, j0 + jj], weight_t, bias, buf[jj])
        for c in range(n_out):
            for jj in range(m):
                out[c, j0 + jj] = buf[jj, c]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def load_head(source: bytes, decoder: Decoder | None = None) -> PatchHead:
    """Read ``head.npz`` (its bytes) of a format-2 model package.

    The file holds ``weight (K, F)``, ``bias (K,)`` and ``patchshape``; ``decoder`` is the
    package's ``ppp+dec`` decoder, if any.

    Raises
    ------
    ValueError
        If the file is not a head written by the exporter.
    """
    try:
        with np.load(io.BytesIO(source), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise PostprocessError(f"cannot read the head weights ({err})") from None
    missing = [k for k in ("weight", "bias", "patchshape") if k not in arrays]
    if missing:
        raise PostprocessError(f"head weights lack the arrays {missing}")
    return PatchHead(np.asarray(arrays["weight"], np.float32),
                     np.asarray(arrays["bias"], np.float32),
                     tuple(int(v) for v in arrays["patchshape"]), decoder)


def load_decoder(source: str | os.PathLike | bytes) -> Decoder:
    """Read ``decoder.npz`` (a path, or its bytes) of a ``ppp+dec`` model package.

    Raises
    ------
    ValueError
        If the file is not a decoder written by the exporter.
    """
    try:
        npz = np.load(io.BytesIO(source) if isinstance(source, bytes) else source,
                      allow_pickle=False)
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise PostprocessError(f"cannot read the decoder weights ({err})") from None
    return decoder_from_arrays(arrays)


def decoder_from_arrays(arrays: dict[str, np.ndarray]) -> Decoder:
    """Build a :class:`Decoder` from ``state_dict``-style arrays plus ``code_shape`` and
    ``patchshape``."""
    for key in ("code_shape", "patchshape"):
        if key not in arrays:
            raise PostprocessError(f"decoder weights lack the array {key!r}")
    layers: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        match = _KEY.match(key)
        if match:
            layers.setdefault(int(match[1]), {})[match[2]] = np.asarray(value, np.float32)
    convs = tuple((layers[i]["weight"], layers[i]["bias"]) for i in sorted(layers)
                  if "weight" in layers[i] and "bias" in layers[i])
    code_shape = tuple(int(v) for v in arrays["code_shape"])
    patchshape = tuple(int(v) for v in arrays["patchshape"])
    _validate_decoder(code_shape, patchshape, convs)
    return Decoder(code_shape, patchshape, convs)


def _validate_decoder(code_shape, patchshape, convs) -> None:
    ndim = len(patchshape)
    if len(code_shape) != ndim + 1 or ndim not in (2, 3):
        raise PostprocessError(f"code_shape {code_shape} does not fit patchshape {patchshape}")
    if len(convs) % 2 != 1:
        raise PostprocessError(f"expected two convolutions per level plus a final one, "
                         f"got {len(convs)} convolutions")
    levels = (len(convs) - 1) // 2
    if any(g * 2**levels < p for g, p in zip(code_shape[1:], patchshape)):
        raise PostprocessError(f"{levels} levels cannot grow the code grid {code_shape[1:]} to "
                         f"patchshape {patchshape}")
    prev = code_shape[0]
    for i, (w, b) in enumerate(convs):
        k = 1 if i == len(convs) - 1 else 3
        if w.shape[1:] != (prev,) + (k,) * ndim or b.shape != (w.shape[0],):
            raise PostprocessError(f"convolution {i}: weight {w.shape} / bias {b.shape} do not "
                             f"follow {prev} input channels and a {k}-wide kernel")
        prev = w.shape[0]
    if prev != 1:
        raise PostprocessError(f"the final convolution must have one output channel, got {prev}")


# --------------------------------------------------------------------------- maths
def _upsample(x: np.ndarray) -> np.ndarray:
    """Nearest x2 along every spatial axis of a channels-last ``(n, *grid, c)`` array."""
    for axis in range(1, x.ndim - 1):
        x = np.repeat(x, 2, axis=axis)
    return x


def _conv3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3[x3] convolution with zero padding 1 of a channels-last array (cross-correlation,
    as PyTorch computes it)."""
    ndim = x.ndim - 2
    grid = x.shape[1:-1]
    padded = np.pad(x, [(0, 0)] + [(1, 1)] * ndim + [(0, 0)])
    out = np.broadcast_to(bias, x.shape[:-1] + bias.shape).copy()
    for offset in itertools.product(range(3), repeat=ndim):
        window = (slice(None),) + tuple(slice(o, o + g) for o, g in zip(offset, grid))
        out += padded[window] @ weight[(slice(None), slice(None)) + offset].T
    return out


def decode_codes(decoder: Decoder, codes: np.ndarray) -> np.ndarray:
    """Patch probabilities ``(N, prod(patchshape))`` of code probabilities ``(N, C)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> convs = ((rng.normal(size=(8, 4, 3, 3)), np.zeros(8)),
    ...          (rng.normal(size=(8, 8, 3, 3)), np.zeros(8)),
    ...          (rng.normal(size=(1, 8, 1, 1)), np.zeros(1)))
    >>> dec = Decoder((4, 2, 2), (3, 3), convs)
    >>> decode_codes(dec, rng.random((5, 16))).shape
    (5, 9)
    """
    codes = np.asarray(codes, np.float32)
    if codes.ndim != 2 or codes.shape[1] != decoder.code_channels:
        raise PostprocessError(f"codes must have shape (N, {decoder.code_channels}), "
                         f"got {codes.shape}")
    x = np.moveaxis(codes.reshape((-1,) + decoder.code_shape), 1, -1)
    for level in range(decoder.levels):
        x = _upsample(x)
        for w, b in decoder.convs[2 * level:2 * level + 2]:
            x = np.maximum(_conv3(x, w.astype(np.float32), b.astype(np.float32)), 0.0)
    w, b = decoder.convs[-1]
    logits = x @ w.reshape(w.shape[0], -1).T.astype(np.float32) + b.astype(np.float32)
    crop = (slice(None),) + tuple(slice((s - p) // 2, (s - p) // 2 + p)
                                  for s, p in zip(logits.shape[1:-1], decoder.patchshape))
    logits = logits[crop][..., 0].reshape(len(codes), -1)
    return _sigmoid(logits)


def voting_mask(numinst: np.ndarray, params: AssemblyParams) -> np.ndarray:
    """Pixels of numinst class 1 (the ones whose patches the assembly reads), by the rule
    of :func:`~ppp_zoo.postprocess.assembly.foreground_classes`."""
    return foreground_classes(numinst, None, params) == 1


PixelDecoder = Union[Decoder, PatchHead]
"""What :func:`decode` runs per pixel: a code decoder or a format-2 head."""


def _check_decode_inputs(numinst, values, decoder: PixelDecoder):
    numinst = np.asarray(numinst)
    values = np.asarray(values)
    if values.ndim != decoder.ndim + 1 or values.shape[0] != decoder.in_channels:
        raise PostprocessError(f"{'codes' if isinstance(decoder, Decoder) else 'features'} must "
                         f"have shape ({decoder.in_channels}, ...) with {decoder.ndim} "
                         f"spatial axes, got {values.shape}")
    if numinst.shape != (3,) + values.shape[1:]:
        raise PostprocessError(f"numinst {numinst.shape} does not match {values.shape}")
    return numinst, values


def _decode_at(values: np.ndarray, flat: np.ndarray, decoder: PixelDecoder,
               memory_budget: int) -> np.ndarray:
    """Patches ``(P, len(flat))`` of the pixels ``flat`` of ``values (K, ...)``."""
    out = np.empty((decoder.n_patch, len(flat)), np.float32)
    if isinstance(decoder, PatchHead) and decoder.decoder is None:
        # the head alone: the pixels' features gathered (a crop of a larger array is not
        # copied whole), decoded straight into the (P, n) layout
        gathered = np.ascontiguousarray(
            values[(slice(None),) + np.unravel_index(flat, values.shape[1:])], np.float32)
        with parallel_section():
            _head_at(gathered, np.ascontiguousarray(np.asarray(decoder.weight, np.float32).T),
                     np.asarray(decoder.bias, np.float32), out)
        return out
    pixels = values.reshape(values.shape[0], -1)
    chunk = max(1, memory_budget // decoder.bytes_per_code())
    for start in range(0, len(flat), chunk):
        index = flat[start:start + chunk]
        out[:, start:start + len(index)] = decoder.decode_pixels(pixels[:, index].T).T
    return out


def decode(numinst: np.ndarray, values: np.ndarray, decoder: PixelDecoder,
           params: AssemblyParams, *, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Dense patches ``(P, [Z,] Y, X)`` from numinst and per-pixel codes or features.

    Parameters
    ----------
    numinst : ndarray, shape (3, [Z,] Y, X)
        numinst probabilities (the model's numinst channels without the batch axis).
    values : ndarray, shape (K, [Z,] Y, X)
        What ``decoder`` reads at each pixel: code probabilities for a :class:`Decoder`,
        the network features for a :class:`PatchHead`.
    decoder : Decoder or PatchHead
        From :func:`~ppp_zoo.postprocess.load_model_params`.
    params : AssemblyParams
        Its ``numinst_thresholds`` choose the decoded pixels.
    memory_budget : int
        Bytes of activations per chunk of decoded pixels.

    Returns
    -------
    patches : ndarray, float32, shape (P, [Z,] Y, X)
        Patch probabilities at numinst class-1 pixels (the only patches the assembly
        reads), 0 elsewhere.
    """
    numinst, values = _check_decode_inputs(numinst, values, decoder)
    flat = np.flatnonzero(voting_mask(numinst, params))
    out = np.zeros((decoder.n_patch, int(np.prod(values.shape[1:]))), np.float32)
    out[:, flat] = _decode_at(values, flat, decoder, memory_budget)
    return out.reshape((decoder.n_patch,) + values.shape[1:])


def decode_candidates(numinst: np.ndarray, values: np.ndarray, decoder: PixelDecoder,
                      params: AssemblyParams, *,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET) -> CandidatePatches:
    """The patches that ``assemble(numinst, patches, params)`` reads, and no others.

    As :func:`decode` (same parameters), but only the candidate centres of ``params`` are
    decoded (class-1 pixels, in fast mode only those on the stride grid that starts at the
    first pixel: a quarter of them in 2D, an eighth in 3D), into a compact
    :class:`~ppp_zoo.postprocess.CandidatePatches` of ``P`` values per candidate instead
    of a dense array of ``P`` values per pixel. The assembly of a crop of it, or with other
    parameters, may need patches it lacks (a ValueError says so).
    """
    numinst, values = _check_decode_inputs(numinst, values, decoder)
    cls = foreground_classes(numinst, None, params)
    flat = np.flatnonzero(candidate_mask(cls, params))
    return CandidatePatches(_decode_at(values, flat, decoder, memory_budget), flat,
                            values.shape[1:])


class DecodedPatches:
    """Patches ``(P, [Z,] Y, X)`` decoded on request, block by block.

    Holds numinst and the codes or features; slicing over the space axes (the first axis
    whole) decodes the patches that the assembly of that block with ``params`` reads
    (:func:`decode_candidates`). :func:`assemble_blockwise` takes it in place of a dense
    patch array, so the dense patches never exist at once.
    """

    def __init__(self, numinst: np.ndarray, values: np.ndarray, decoder: PixelDecoder,
                 params: AssemblyParams):
        self.numinst, self.values, self.decoder, self.params = numinst, values, decoder, params
        self.shape = (decoder.n_patch,) + tuple(values.shape[1:])
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if key[0] != slice(None):
            raise IndexError("decoded patches are sliced over space only")
        return decode_candidates(np.asarray(self.numinst[key], np.float32),
                                 np.asarray(self.values[key], np.float32), self.decoder,
                                 self.params)


# the shipped kernels for any x86-64 CPU, when they apply (see _portable.py)
_portable.attach(globals())
