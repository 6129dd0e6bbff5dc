"""The explorer's two caches: :class:`ArrayCache` on disk and :class:`Memo` in memory, plus a background
:class:`Worker` that fills the memo ahead of time.

Both caches are keyed by what a result is computed from (:func:`digest`), so changed weights or data never
reuse a stale result.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArrayCache", "Memo", "Worker", "digest"]

Arrays = Mapping[str, np.ndarray]


def digest(*parts: Any) -> str:
    """A 32-hex-digit SHA-256 of ``parts`` (arrays by their bytes, anything else by ``str``).

    Each part is length-prefixed, so ``("ab", "c")`` and ``("a", "bc")`` differ.
    """
    h = hashlib.sha256()
    for part in parts:
        data = np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else str(part).encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:32]


class ArrayCache:
    """Dicts of arrays stored as ``<directory>/<key>.npz``, least recently used pruned beyond ``max_bytes``.

    Parameters
    ----------
    directory : path or None
        Where entries live; None disables the disk (every call computes).
    max_bytes : int
        Total size kept after each write (one 10,000-image gallery's embeddings take about 50 MB, a curve
        about 1 KB).

    Writes are atomic (temporary file, then rename), so a reader never sees half an entry; a damaged entry
    is recomputed and a read-only or full disk only costs the speed-up.
    """

    def __init__(self, directory: str | os.PathLike | None, max_bytes: int = 500 * 2**20) -> None:
        self.directory = None if directory is None else Path(directory)
        self.max_bytes = int(max_bytes)

    def path(self, key: str) -> Path | None:
        """The file of entry ``key`` (None without a directory)."""
        return None if self.directory is None else self.directory / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """Entry ``key``, or None when absent or unreadable (marks it recently used)."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name.replace("__", "/"): data[name] for name in data.files}
            os.utime(path)
            return arrays
        except (OSError, ValueError, EOFError):
            return None

    def put(self, key: str, arrays: Arrays) -> None:
        """Store ``arrays`` (names may contain ``/``) as entry ``key``, then prune."""
        path = self.path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{key}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
            np.savez(tmp, **{name.replace("/", "__"): value for name, value in arrays.items()})
            os.replace(tmp, path)
            self.prune()
        except OSError:
            pass

    def get_or_compute(self, key: str, compute: Callable[[], Arrays]) -> dict[str, np.ndarray]:
        """Entry ``key``, computed by ``compute()`` and stored when missing."""
        found = self.get(key)
        if found is not None:
            return found
        arrays = dict(compute())
        self.put(key, arrays)
        return arrays

    def prune(self) -> None:
        """Delete the least recently used entries until the directory holds at most ``max_bytes``."""
        if self.directory is None:
            return
        entries = sorted(self.directory.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for entry in entries:
            total += entry.stat().st_size
            if total > self.max_bytes:
                entry.unlink(missing_ok=True)


class Memo:
    """Results computed once per key, safe across threads (streamlit serves sessions from threads).

    Each key has its own lock: a long computation blocks only the callers that need that very result,
    never a slider move served from results already computed.
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The value of ``key`` if already computed, else ``default`` (never computes, never waits)."""
        return self._values.get(key, default)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key``; concurrent callers of the same key wait for the first one."""
        if key in self._values:
            return self._values[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = compute()
            return self._values[key]


class Worker:
    """One daemon thread running submitted jobs by priority (lower first), each at most once per key.

    The explorer uses it to compute, ahead of time, what the page will ask for next (the curves of the other
    methods and orders), while the page answers from what is ready. A failed job is recorded in
    :attr:`errors` and the others go on.
    """

    def __init__(self, memo: Memo) -> None:
        self._memo = memo
        self._queue: list[tuple[float, int, Hashable, Callable[[], Any], str]] = []
        self._queued: dict[Hashable, float] = {}
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.current: str | None = None
        self.errors: dict[Hashable, str] = {}

    def submit(self, key: Hashable, compute: Callable[[], Any], *, priority: float = 0.0, label: str = "") -> None:
        """Queue ``memo.get(key, compute)`` unless done or queued with a priority at least as urgent."""
        with self._cond:
            if key in self._memo or self._queued.get(key, float("inf")) <= priority:
                return
            self._queued[key] = priority
            heapq.heappush(self._queue, (priority, next(self._counter), key, compute, label))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="explorer-worker", daemon=True)
                self._thread.start()
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._queued)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                priority, _, key, compute, label = heapq.heappop(self._queue)
                if self._queued.get(key) != priority:  # superseded by a more urgent copy
                    continue
                self.current = label
            try:
                self._memo.get(key, compute)
            except Exception as exc:  # noqa: BLE001 - reported to the page, the worker keeps going
                self.errors[key] = f"{type(exc).__name__}: {exc}"
            finally:
                with self._cond:
                    self._queued.pop(key, None)
                    self.current = None
