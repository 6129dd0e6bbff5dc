"""A validated bundle of the embedding arrays one set of images has under the compared models.

Conventions (docs/design.md): every array is ``float32``, C-contiguous, shape ``(n, d)``, with L2-normalised
rows; labels are ``int64`` ``(n,)``. A label ``< 0`` means "unknown" (e.g. an uploaded query image): such an
item is never relevant to anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Names of the embedding arrays a bundle may hold, in file order.
ARRAY_NAMES: tuple[str, ...] = ("old", "new", "transformed", "bct")

#: Arrays that live in the old model's space and must share its dimension.
_OLD_SPACE = ("transformed", "bct")


def l2_normalize(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Return ``x`` as a float32 C-contiguous ``(n, d)`` array with unit-length rows.

    Rows whose norm is already within 1e-6 of 1 are left unchanged.

    Raises ``ValueError`` naming ``name`` when ``x`` is not 2-D, is empty, holds NaN/inf, or has a zero row
    (which has no direction to normalise to).
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, d), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    # Normalise in float64 so that large or tiny raw values do not overflow/underflow the norm.
    norms = np.linalg.norm(arr.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: {int((norms == 0).sum())} row(s) have zero norm")
    # Rows already of unit length (to float32 precision) are kept bit for bit, so that normalising is
    # idempotent and a saved bundle loads back unchanged.
    scale = np.where(np.abs(norms - 1.0) <= 1e-6, 1.0, norms).astype(np.float32)
    return np.ascontiguousarray(arr / scale, dtype=np.float32)


def as_int64_vector(x: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous int64 ``(n,)`` array; ``ValueError`` naming ``name`` for a wrong shape, an
    empty array, or values that are not integers (integral floats are accepted)."""
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


@dataclass(eq=False)  # arrays have no single truth value: compare bundles field by field
class Embeddings:
    """Embeddings of ``n`` images under the compared models.

    Attributes:
        labels: ``(n,)`` int64 class ids; ``-1`` (any negative value) = unknown. ``None`` on construction
            means all unknown (a query-only bundle such as uploaded images) and is stored as all ``-1``.
        old: ``(n, d_o)`` old-model embeddings phi_o.
        new: ``(n, d_n)`` new-model embeddings phi_n.
        transformed: ``(n, d_o)`` reverse-transformed new embeddings psi(phi_n), queries in the old space.
        bct: ``(n, d_o)`` embeddings of a backward-compatible (BCT) model, comparable with ``old``.

    Every array present is converted to float32 C-contiguous and L2-normalised on construction; NaN/inf,
    empty arrays, mismatched row counts and old-space arrays whose dimension differs from ``old`` raise
    ``ValueError``. At least one array must be given.
    """

    labels: np.ndarray | None
    old: np.ndarray | None = None
    new: np.ndarray | None = None
    transformed: np.ndarray | None = None
    bct: np.ndarray | None = None
    n: int = field(init=False)

    def __post_init__(self) -> None:
        present = [name for name in ARRAY_NAMES if getattr(self, name) is not None]
        if not present:
            expected = ", ".join(ARRAY_NAMES)
            raise ValueError(f"Embeddings: no embedding array given (expected some of {expected})")
        for name in present:
            setattr(self, name, l2_normalize(getattr(self, name), name))
        counts = {name: getattr(self, name).shape[0] for name in present}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{k}={v}" for k, v in counts.items())
            raise ValueError(f"Embeddings: arrays have different numbers of rows ({detail})")
        self.n = counts[present[0]]
        if self.old is not None:
            for name in _OLD_SPACE:
                arr = getattr(self, name)
                if arr is not None and arr.shape[1] != self.old.shape[1]:
                    raise ValueError(
                        f"Embeddings: '{name}' has dimension {arr.shape[1]} but 'old' has"
                        f" {self.old.shape[1]}; '{name}' must live in the old space"
                    )
        if self.labels is None:
            self.labels = np.full(self.n, -1, dtype=np.int64)
        else:
            self.labels = as_int64_vector(self.labels, "labels", self.n)

    @property
    def available(self) -> tuple[str, ...]:
        """Names of the embedding arrays present, in ``ARRAY_NAMES`` order."""
        return tuple(name for name in ARRAY_NAMES if getattr(self, name) is not None)

    def array(self, name: str) -> np.ndarray:
        """The array called ``name``; ``ValueError`` naming it when it is absent or unknown."""
        if name not in ARRAY_NAMES:
            raise ValueError(f"unknown embedding array {name!r}; expected one of {', '.join(ARRAY_NAMES)}")
        arr = getattr(self, name)
        if arr is None:
            raise ValueError(f"missing embedding array '{name}'")
        return arr

    def require(self, names: Iterable[str], purpose: str = "this request") -> None:
        """Raise ``ValueError`` naming every array of ``names`` the bundle lacks (``purpose`` says why)."""
        missing = [name for name in dict.fromkeys(names) if getattr(self, name, None) is None]
        if missing:
            raise ValueError(
                f"missing embedding array(s) {', '.join(repr(m) for m in missing)} needed by {purpose}"
                f" (available: {', '.join(self.available) or 'none'})"
            )

    def subset(self, index: np.ndarray) -> Embeddings:
        """A new bundle with the rows ``index`` (any numpy index over the ``n`` rows) of every array."""
        arrays = {name: getattr(self, name)[index] for name in self.available}
        return Embeddings(self.labels[index], **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Embeddings:
        """Read an ``EMB.npz`` file: ``labels`` (n,) and any of ``old``, ``new``, ``transformed``, ``bct``.

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a valid
        bundle. Other keys in the file are ignored.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such embeddings file: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
        if "labels" not in arrays:
            raise ValueError(f"{path}: no 'labels' array (found {', '.join(sorted(arrays)) or 'nothing'})")
        return cls(arrays["labels"], **{name: arrays[name] for name in ARRAY_NAMES if name in arrays})

    def save(self, path: str | Path) -> None:
        """Write the bundle as an ``EMB.npz`` file readable by :meth:`load` (compressed)."""
        arrays = {name: getattr(self, name) for name in self.available}
        np.savez_compressed(Path(path), labels=self.labels, **arrays)
