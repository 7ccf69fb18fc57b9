"""The ``ppp+dec`` patch decoder in numpy: per-pixel codes in, shape patches out.

The maths are those of :class:`ppp_zoo.model.PatchDecoder` (which this module does not
import): a pixel's code vector of ``C = prod(code_shape)`` values is read in C order as
``c0`` channels on a ``g_1 x ... x g_ndim`` grid; each of ``L`` levels upsamples x2 (nearest)
and applies two 3x3[x3] convolutions (zero padding 1) each followed by a ReLU; a final 1x1
convolution gives one channel, the ``g * 2**L`` grid is centre-cropped to ``patchshape`` and
a sigmoid turns the logits into patch probabilities, flattened in C order.

Only pixels that vote in the assembly (numinst class 1) are decoded, in chunks whose
activations stay below a memory budget; every other pixel's patch is left at 0, which the
assembly never reads.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import re

import numpy as np

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

    def bytes_per_code(self) -> int:
        """Peak activation bytes of decoding one code (a few buffers of the largest level)."""
        grid = np.asarray(self.code_shape[1:])
        peak = int(np.prod(grid)) * self.code_shape[0]
        for level in range(self.levels):
            n = int(np.prod(grid * 2 ** (level + 1)))
            peak = max(peak, n * int(self.convs[2 * level][0].shape[0]))
        return 4 * 4 * peak  # float32, about four live buffers


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
        raise ValueError(f"cannot read the decoder weights ({err})") from None
    return decoder_from_arrays(arrays)


def decoder_from_arrays(arrays: dict[str, np.ndarray]) -> Decoder:
    """Build a :class:`Decoder` from ``state_dict``-style arrays plus ``code_shape`` and
    ``patchshape``."""
    for key in ("code_shape", "patchshape"):
        if key not in arrays:
            raise ValueError(f"decoder weights lack the array {key!r}")
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
        raise ValueError(f"code_shape {code_shape} does not fit patchshape {patchshape}")
    if len(convs) % 2 != 1:
        raise ValueError(f"expected two convolutions per level plus a final one, "
                         f"got {len(convs)} convolutions")
    levels = (len(convs) - 1) // 2
    if any(g * 2**levels < p for g, p in zip(code_shape[1:], patchshape)):
        raise ValueError(f"{levels} levels cannot grow the code grid {code_shape[1:]} to "
                         f"patchshape {patchshape}")
    prev = code_shape[0]
    for i, (w, b) in enumerate(convs):
        k = 1 if i == len(convs) - 1 else 3
        if w.shape[1:] != (prev,) + (k,) * ndim or b.shape != (w.shape[0],):
            raise ValueError(f"convolution {i}: weight {w.shape} / bias {b.shape} do not "
                             f"follow {prev} input channels and a {k}-wide kernel")
        prev = w.shape[0]
    if prev != 1:
        raise ValueError(f"the final convolution must have one output channel, got {prev}")


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
        raise ValueError(f"codes must have shape (N, {decoder.code_channels}), "
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
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def voting_mask(numinst: np.ndarray, params: AssemblyParams) -> np.ndarray:
    """Pixels of numinst class 1 (the ones whose patches the assembly reads)."""
    t1, t2 = params.numinst_thresholds
    return (numinst[1] > t1) & ~(numinst[2] > t2)


def decode(numinst: np.ndarray, codes: np.ndarray, decoder: Decoder,
           params: AssemblyParams, *, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Dense patches ``(P, [Z,] Y, X)`` from numinst and code probabilities.

    Parameters
    ----------
    numinst : ndarray, shape (3, [Z,] Y, X)
        numinst probabilities (the model's ``numinst`` output without the batch axis).
    codes : ndarray, shape (C, [Z,] Y, X)
        Code probabilities (the model's ``codes`` output without the batch axis).
    decoder : Decoder
        From :func:`load_decoder` or :func:`~ppp_zoo.postprocess.load_model_params`.
    params : AssemblyParams
        Its ``numinst_thresholds`` choose the decoded pixels.
    memory_budget : int
        Bytes of activations per chunk of decoded pixels.

    Returns
    -------
    patches : ndarray, float32, shape (P, [Z,] Y, X)
        Patch probabilities at numinst class-1 pixels, 0 elsewhere.
    """
    numinst = np.asarray(numinst)
    codes = np.asarray(codes)
    if codes.ndim != decoder.ndim + 1 or codes.shape[0] != decoder.code_channels:
        raise ValueError(f"codes must have shape ({decoder.code_channels}, ...) with "
                         f"{decoder.ndim} spatial axes, got {codes.shape}")
    if numinst.shape != (3,) + codes.shape[1:]:
        raise ValueError(f"numinst {numinst.shape} does not match codes {codes.shape}")
    flat = np.flatnonzero(voting_mask(numinst, params))
    out = np.zeros((decoder.n_patch, int(np.prod(codes.shape[1:]))), np.float32)
    pixels = codes.reshape(codes.shape[0], -1)
    chunk = max(1, memory_budget // decoder.bytes_per_code())
    for start in range(0, len(flat), chunk):
        index = flat[start:start + chunk]
        out[:, index] = decode_codes(decoder, pixels[:, index].T).T
    return out.reshape((decoder.n_patch,) + codes.shape[1:])

