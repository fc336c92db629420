"""Start what a benchmark needs on loopback: a private Redis, a fresh database, processes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench.processes import ROOT, free_port, start_redis, worker_args
from contactsync import supervise
from contactsync.contacts import create_contact
from contactsync.db import Database
from contactsync.keys import create_key
from contactsync.migrate import upgrade
from contactsync.settings import Settings

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
PG_DB_PREFIX = "contactsync_bench_"


@contextmanager
def private_redis() -> Iterator[str]:
    """Run a redis-server with its append-only file on (the production setting)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench needs redis-server on PATH")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as data:
        port = free_port()
        process = start_redis(Path(data) / "redis.log", port, Path(data), appendonly=True,
                              timeout=60)
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.stop(10)


@contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[str]:
    """Yield the URL of a new, migrated database of the given backend, dropped afterwards.

    A PostgreSQL database of this run's own: two benches side by side (a developer's and a
    test's) must never drop each other's tables.
    """
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
        upgrade(url)
        yield url
        return
    name = f"{PG_DB_PREFIX}{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(settings: Settings, contacts: int) -> tuple[str, list[str]]:
    """Create an account with a key without a practical rate limit, and its contacts."""
    db = Database(settings)
    try:
        with db.unit_of_work() as session:
            row, key = create_key(
                session, "bench", ["contacts:read", "contacts:write"],
                rate_limit_per_second=1_000_000, update_rate_limit_per_second=1_000_000,
            )
            ids = [f"cnt_bench{i:07d}" for i in range(contacts)]
            for contact_id in ids:
                create_contact(session, row.account_id, {"name": "Bench"}, contact_id=contact_id)
        return key, ids
    finally:
        db.dispose()


def wait_for(probe: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} did not start")


def socket_pids(port: int, state: str) -> Counter[int]:
    """Which process holds each TCP socket of local port `port` in `state` (from `ss`)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", state, f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout
    return Counter(int(pid) for pid in re.findall(r"pid=(\d+)", out))


def wait_listening(port: int, processes: int, what: str) -> None:
    """Wait until `processes` processes listen on `port`: one that answered is not enough,
    since a connection opened while another is still starting stays with the first."""
    wait_for(lambda: len(socket_pids(port, "listening")) == processes, what)


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]

    def pids(self) -> list[int]:
        """Return the process and its children (uvicorn and Celery fork workers)."""
        pids = [self.process.pid]
        for pid in pids:
            children = Path(f"/proc/{pid}/task/{pid}/children")
            if children.exists():
                pids += [int(p) for p in children.read_text().split()]
        return pids

    def rss_mib(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except FileNotFoundError:
                continue
        return total / 1024

    def stop(self) -> None:
        supervise.stop([self.process], grace=30)


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
    env.update({
        "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "CONTACTSYNC_LOG_LEVEL": "WARNING", "CONTACTSYNC_MAX_BACKLOG": "10000000",
        "CONTACTSYNC_WORKER_METRICS_PORT": "0",
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


def start(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Service:
    log = (log_dir / f"{name}.log").open("ab")
    process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return Service(name, process)


def start_gateway(env: dict[str, str], port: int, workers: int, log_dir: Path) -> Service:
    service = start("gateway", [sys.executable, "-m", "cli", "gateway", "--port",
                                str(port), "--workers", str(workers)], env, log_dir)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, "gateway")
    wait_listening(port, workers, "gateway")
    return service


def start_plain(env: dict[str, str], port: int, workers: int, log_dir: Path) -> Service:
    """Our gateway with its PUT routed by FastAPI (`bench/plain_gateway.py`)."""
    service = start("plain", [sys.executable, "-m", "bench.plain_gateway", "--port", str(port),
                              "--workers", str(workers)], env, log_dir)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, "gateway")
    wait_listening(port, workers, "gateway")
    return service


def start_bare(env: dict[str, str], port: int, workers: int, log_dir: Path) -> Service:
    service = start("bare", [sys.executable, "-m", "bench.bare_app", "--port", str(port),
                             "--workers", str(workers)], env, log_dir)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200,
             "bare app")
    wait_listening(port, workers, "bare app")
    return service


def start_straightforward(env: dict[str, str], port: int, workers: int, log_dir: Path) -> Service:
    """The straightforward design's API (`bench/straightforward/`), served as ours is."""
    service = start("straightforward", [sys.executable, "-m", "bench.straightforward.app",
                                        "--port", str(port), "--workers", str(workers)],
                    env, log_dir)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200,
             "the straightforward design's API")
    wait_listening(port, workers, "the straightforward design's API")
    return service


def start_worker(
    env: dict[str, str], concurrency: int, log_dir: Path, app: str = "worker.app",
    queues: str = "contacts.updates,contacts.bulk",
) -> Service:
    service = start("worker", worker_args(f"bench-{os.getpid()}", concurrency, app=app,
                                          queues=queues, loglevel="WARNING"), env, log_dir)
    return service
