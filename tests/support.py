"""Helpers shared by the tests: services, free ports, processes, waiting.

The process, port, redis-server and worker-command helpers live in `bench/processes.py`, shared
with the benchmarks (bench imports nothing from tests/), and are re-exported here."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from bench.processes import (
    ROOT,
    Process,
    free_port,
    service_env,
    start_redis,
    wait_until,
    worker_args,
)
from contactsync.db import Database

__all__ = ["ROOT", "Process", "free_port", "service_env", "start_redis", "wait_until"]


def require_service(name: str, ok: bool) -> None:
    """Skip when a service is missing on a laptop; fail in CI, where it must be there."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not answering, and CI must have it")
    pytest.skip(f"{name} is not answering")


def start_worker(env: dict[str, str], log_path: Path) -> Process:
    return Process(worker_args(f"test-{os.getpid()}-{log_path.stem}"), env, log_path)


def start_gateway(env: dict[str, str], port: int, log_path: Path) -> Process:
    args = [
        sys.executable, "-m", "uvicorn", "api_gateway.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]
    process = Process(args, env, log_path)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200)
    return process


def wait_for_worker(process: Process, timeout: float = 30) -> None:
    wait_until(lambda: "ready." in process.log(), timeout=timeout)


def _lock_waiters(db: Database) -> int:
    with db.reading() as session:
        waiting = session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ))
    return int(waiting or 0)


def wait_blocked(db: Database, tid: int, alive: Callable[[], bool] = lambda: True) -> None:
    """Wait until thread or process `tid` waits for a lock held in another connection: on
    PostgreSQL a session waiting on a lock, on SQLite `tid` sleeping in SQLite's busy handler
    (BEGIN IMMEDIATE behind another writer). A barrier, not a guess at how long it takes: on a
    busy machine a fixed sleep may end before the race is set up. Stops waiting once `alive`
    says the waiter has finished (refused at once, say)."""
    if db.settings.is_sqlite:
        wchan = Path(f"/proc/{tid}/wchan")
        wait_until(lambda: not alive() or wchan.read_text() == "hrtimer_nanosleep", timeout=30)
    else:
        wait_until(lambda: not alive() or _lock_waiters(db) > 0, timeout=30)
