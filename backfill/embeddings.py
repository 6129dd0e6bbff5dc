"""A validated bundle of the embedding arrays one set of images has under the compared models.

Every array is float32, C-contiguous, ``(n, d)`` with L2-normalised rows; labels are int64 ``(n,)``, and a
label ``< 0`` means "unknown" (e.g. an uploaded query image): such an item is never relevant to anything.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backfill._validation import as_int64_vector, check_matrix

__all__ = ["ARRAY_NAMES", "Embeddings", "l2_normalize"]

#: Names of the embedding arrays a bundle may hold, in file order.
ARRAY_NAMES: tuple[str, ...] = ("old", "new", "transformed", "bct")

#: Arrays that live in the old model's space and must share its dimension.
_OLD_SPACE = ("transformed", "bct")


def l2_normalize(x: np.ndarray, *, name: str = "embeddings") -> np.ndarray:
    """Return ``x`` as a float32 C-contiguous ``(n, d)`` array with unit-length rows.

    Rows whose norm is already within 1e-6 of 1 are left unchanged.

    Parameters
    ----------
    x : array-like of shape (n, d)
        Real, finite embeddings with no zero row (a zero row has no direction to normalise to).
    name : str, default="embeddings"
        What ``x`` is, for error messages.

    Returns
    -------
    ndarray of shape (n, d), float32

    Raises
    ------
    ValueError
        Naming ``name`` when ``x`` is not 2-D, is empty, holds NaN/inf or has a zero row.
    """
    arr = check_matrix(x, name)
    # Normalise in float64 so that large or tiny raw values do not overflow/underflow the norm.
    norms = np.linalg.norm(arr.astype(np.float64), axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: {int((norms == 0).sum())} row(s) have zero norm")
    # Rows already of unit length (to float32 precision) are kept bit for bit, so that normalising is
    # idempotent and a saved bundle loads back unchanged.
    scale = np.where(np.abs(norms - 1.0) <= 1e-6, 1.0, norms).astype(np.float32)
    return np.ascontiguousarray(arr / scale, dtype=np.float32)


@dataclass(eq=False)  # arrays have no single truth value: compare bundles field by field
class Embeddings:
    """Embeddings of ``n`` images under the compared models.

    Every array present is converted to float32 C-contiguous and L2-normalised on construction.

    Parameters
    ----------
    labels : array-like of shape (n,) or None
        Integer class ids; a negative value means unknown. ``None`` means all unknown (a query-only bundle
        such as uploaded images) and is stored as all ``-1``.
    old : array-like of shape (n, d_o), optional
        Old-model embeddings phi_o.
    new : array-like of shape (n, d_n), optional
        New-model embeddings phi_n.
    transformed : array-like of shape (n, d_o), optional
        Reverse-transformed new embeddings psi(phi_n): new queries mapped into the old space.
    bct : array-like of shape (n, d_o), optional
        Embeddings of a backward-compatible (BCT) model, comparable with ``old``.

    Attributes
    ----------
    n : int
        Number of images.

    Raises
    ------
    ValueError
        For no array at all, NaN/inf, empty arrays, mismatched row counts, or an old-space array
        (``transformed``, ``bct``) whose dimension differs from ``old``'s.
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
            setattr(self, name, l2_normalize(getattr(self, name), name=name))
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
            self.labels = as_int64_vector(self.labels, "labels", n=self.n)

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

    def require(self, names: Iterable[str], *, purpose: str = "this request") -> None:
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

        Other keys in the file are ignored.

        Raises
        ------
        FileNotFoundError
            When ``path`` does not exist.
        ValueError
            In one line, when the file is not a NumPy ``.npz`` archive (e.g. a text or ``.npy`` file) or
            is not a valid bundle.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such embeddings file: {path}")
        # Check the format first: numpy reads a non-zip file as a pickle and answers with advice about
        # allow_pickle, which is not what a user who passed the wrong file needs to hear.
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a readable .npz file (no zip archive; `backfill embed` writes one)")
        arrays, key = {}, "labels"
        try:
            with np.load(path, allow_pickle=False) as data:
                for key in ("labels", *ARRAY_NAMES):
                    if key in data.files:
                        arrays[key] = data[key]
                found = data.files
        except ValueError as exc:  # e.g. an object array: numpy would again advise allow_pickle
            raise ValueError(f"{path}: array {key!r} is not a plain numeric array") from exc
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__})") from exc
        if "labels" not in arrays:
            raise ValueError(f"{path}: no 'labels' array (found {', '.join(sorted(found)) or 'nothing'})")
        return cls(arrays.pop("labels"), **arrays)

    def save(self, path: str | Path) -> None:
        """Write the bundle as an ``EMB.npz`` file readable by :meth:`load` (compressed)."""
        arrays = {name: getattr(self, name) for name in self.available}
        np.savez_compressed(Path(path), labels=self.labels, **arrays)
