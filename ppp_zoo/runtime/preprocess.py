"""The standard bioimage.io preprocessing operations, in NumPy.

Each operation takes the input tensor with its axis ids (e.g. ``("batch", "channel", "y",
"x")``) and returns a new array; statistics are computed per sample over the axes named
in the operation's ``axes`` (all axes when ``axes`` is absent), as bioimageio.core does:
quantiles with linear interpolation for ``scale_range`` (``inverted_cdf`` for ``clip``
percentiles), the population standard deviation (ddof 0) for
``zero_mean_unit_variance``. Computation is in float64; :func:`preprocess` returns the
dtype the last ``ensure_dtype`` asked for (float32 by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import UserError

Axes = Sequence[str]


def _reduce_axes(axes: Axes, kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    """Positions of the axes to reduce over (all axes when ``kwargs`` names none)."""
    names = kwargs.get("axes")
    if names is None:
        return tuple(range(len(axes)))
    if isinstance(names, str):  # format 0.4 spelling, e.g. "yx"
        names = ["batch" if c == "b" else "channel" if c == "c" else c for c in names]
    missing = [n for n in names if n not in axes]
    if missing:
        raise UserError(f"preprocessing names axes {missing} that the input {tuple(axes)} lacks")
    return tuple(axes.index(n) for n in names)


def _along_axis(value: Any, axes: Axes, axis: str | None, ndim: int) -> np.ndarray | float:
    """A scalar, or a per-entry list broadcast along ``axis``."""
    if axis is None or np.isscalar(value):
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.size != 1:
            raise UserError(f"expected one value, got {value!r}")
        return float(arr[0])
    shape = [1] * ndim
    shape[axes.index(axis)] = -1
    return np.asarray(value, dtype=np.float64).reshape(shape)


def ensure_dtype(x: np.ndarray, dims: Axes, kwargs: Mapping[str, Any]) -> np.ndarray:
    return x.astype(kwargs.get("dtype", "float32"))


def scale_range(x: np.ndarray, dims: Axes, kwargs: Mapping[str, Any]) -> np.ndarray:
    """``(x - lo) / (hi - lo + eps)`` with lo, hi the min/max percentiles of the sample."""
    red = _reduce_axes(dims, kwargs)
    q = np.array([float(kwargs.get("min_percentile", 0.0)),
                  float(kwargs.get("max_percentile", 100.0))]) / 100.0
    xf = x.astype(np.float64)
    lo, hi = np.quantile(xf, q, axis=red, keepdims=True, method="linear")
    return (xf - lo) / (hi - lo + float(kwargs.get("eps", 1e-6)))


def zero_mean_unit_variance(x: np.ndarray, dims: Axes, kwargs: Mapping[str, Any]) -> np.ndarray:
    """``(x - mean) / (std + eps)`` with the sample's mean and population std."""
    red = _reduce_axes(dims, kwargs)
    xf = x.astype(np.float64)
    mean = xf.mean(axis=red, keepdims=True)
    std = np.sqrt(((xf - mean) ** 2).mean(axis=red, keepdims=True))
    return (xf - mean) / (std + float(kwargs.get("eps", 1e-6)))


def fixed_zero_mean_unit_variance(x: np.ndarray, dims: Axes, kwargs: Mapping[str, Any]) -> np.ndarray:
    axis = kwargs.get("axis")
    mean = _along_axis(kwargs["mean"], dims, axis, x.ndim)
    std = _along_axis(kwargs["std"], dims, axis, x.ndim)
    return (x.astype(np.float64) - mean) / (std + float(kwargs.get("eps", 1e-6)))


def scale_linear(x: np.ndarray, dims: Axes, kwargs: Mapping[str, Any]) -> np.ndarray:
    axis = kwargs.get("axis")
    gain = _along_axis(kwargs.get("gain", 1.0), dims, axis, x.ndim)
    offset = _along_axis(kwargs.get("offset", 0.0), dims, axis, x.ndim)
    return x.astype(np.float64) * gain + offset


def clip(x: np.ndarray, dims: Axes, kwargs: Mapping[str, Any]) -> np.ndarray:
    xf = x.astype(np.float64)
    lo, hi = kwargs.get("min"), kwargs.get("max")
    if lo is None and kwargs.get("min_percentile") is not None:
        lo = np.quantile(xf, float(kwargs["min_percentile"]) / 100, axis=_reduce_axes(dims, kwargs),
                         keepdims=True, method="inverted_cdf")
    if hi is None and kwargs.get("max_percentile") is not None:
        hi = np.quantile(xf, float(kwargs["max_percentile"]) / 100, axis=_reduce_axes(dims, kwargs),
                         keepdims=True, method="inverted_cdf")
    if lo is None and hi is None:
        raise UserError("clip needs min or max")
    return np.clip(xf, lo, hi)


def binarize(x: np.ndarray, dims: Axes, kwargs: Mapping[str, Any]) -> np.ndarray:
    threshold = _along_axis(kwargs["threshold"], dims, kwargs.get("axis"), x.ndim)
    return x > threshold


def sigmoid(x: np.ndarray, dims: Axes, kwargs: Mapping[str, Any]) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


OPERATIONS = {
    "ensure_dtype": ensure_dtype,
    "scale_range": scale_range,
    "zero_mean_unit_variance": zero_mean_unit_variance,
    "fixed_zero_mean_unit_variance": fixed_zero_mean_unit_variance,
    "scale_linear": scale_linear,
    "clip": clip,
    "binarize": binarize,
    "sigmoid": sigmoid,
}


def validate_preprocessing(ops: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` for operations this runtime cannot apply."""
    for op in ops:
        if op["id"] not in OPERATIONS:
            raise UserError(f"unsupported preprocessing operation {op['id']!r} "
                             f"(supported: {', '.join(OPERATIONS)})")
        names = op.get("kwargs", {}).get("axes")
        if isinstance(names, (list, tuple)) and "batch" in names:
            raise UserError(f"preprocessing {op['id']!r} uses dataset statistics (axes "
                             "include batch), which this runtime does not compute")


def preprocess(x: np.ndarray, axes: Axes, ops: Sequence[Mapping[str, Any]],
               dtype: str = "float32") -> np.ndarray:
    """Apply the preprocessing operations of a model input in order.

    Parameters
    ----------
    x : ndarray
        The input tensor, e.g. of shape ``(1, C, Y, X)``.
    axes : sequence of str
        Axis ids of ``x``, e.g. ``("batch", "channel", "y", "x")``.
    ops : sequence of mappings
        ``{"id": ..., "kwargs": {...}}`` as in rdf.yaml.
    dtype : str
        dtype of the result (the input tensor's declared data type).

    Examples
    --------
    >>> x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    >>> ops = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
    ...        {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 0,
    ...                                         "max_percentile": 100, "eps": 1e-6}}]
    >>> out = preprocess(x, ("batch", "channel", "y", "x"), ops)
    >>> out.dtype, round(float(out.min()), 6), round(float(out.max()), 6)
    (dtype('float32'), 0.0, 1.0)
    """
    axes = tuple(axes)
    if x.ndim != len(axes):
        raise UserError(f"tensor of shape {x.shape} does not match axes {axes}")
    validate_preprocessing(ops)
    for op in ops:
        x = OPERATIONS[op["id"]](x, axes, dict(op.get("kwargs") or {}))
    return np.ascontiguousarray(x, dtype=dtype)
