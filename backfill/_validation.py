"""Input checks shared by the engine modules; each raises ``ValueError`` naming the offending input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["as_int64_vector", "check_int", "check_matrix", "check_ratio"]


def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` after checking it is an integer ``>= minimum`` (integral floats pass).

    Parameters
    ----------
    value : object
        The number to check.
    name : str
        What ``value`` is, for the error message.
    minimum : int, default=1
        Smallest accepted value.

    Returns
    -------
    int
    """
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_ratio(value: Any, name: str = "backfill ratio") -> float:
    """``value`` as a ``float`` after checking it is a finite number in ``[0, 1]``."""
    try:
        p = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from exc
    if not math.isfinite(p) or p < 0.0 or p > 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return p


def check_matrix(x: Any, name: str, *, dtype: type = np.float32) -> np.ndarray:
    """``x`` as a non-empty 2-D array of finite real numbers converted to ``dtype``.

    Parameters
    ----------
    x : array-like of shape (n, d)
        The matrix to check; ``n`` and ``d`` must both be positive.
    name : str
        What ``x`` is, for the error message.
    dtype : numpy dtype, default=np.float32
        Dtype of the returned array (a copy only when a conversion is needed).

    Returns
    -------
    ndarray of shape (n, d)
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, d), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def as_int64_vector(x: Any, name: str, *, n: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous int64 array of shape ``(n,)``.

    Integral floats are accepted. ``ValueError`` names ``name`` for a wrong shape or length, an empty array,
    or values that are not integers.
    """
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: empty array")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: has {arr.shape[0]} entries, expected {n}")
    if not np.issubdtype(arr.dtype, np.integer):
        integral = np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all()
        if not integral or np.any(arr != np.round(arr)):
            raise ValueError(f"{name}: expected integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)
