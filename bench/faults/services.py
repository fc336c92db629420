"""What a fault scenario runs: its own Redis (append-only file on), database, workers, gateways.

Every process is a child of the test with a log file of its own; `Stack.close` stops them all,
and each fixture or `with` block that makes a stack closes it, whatever happens in between.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import psycopg
from redis import Redis

from bench.processes import (
    Process,
    free_port,
    service_env,
    start_redis,
    wait_until,
    worker_args,
)
from contactsync.contacts import create_contact
from contactsync.db import Database
from contactsync.keys import create_key
from contactsync.migrate import upgrade
from contactsync.models import Base

PG_ADMIN_URL = os.environ.get(
    "CONTACTSYNC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test"
)
# One database per run (pytest session or bench), dropped at its end: runs by several people
# on one machine must not empty each other's tables.
FAULTS_DB_PREFIX = "contactsync_faults"
QUEUES = "contacts.updates,contacts.bulk"

# What every process of a scenario runs with. A short visibility timeout brings unclaimed
# unacknowledged messages back within seconds (the production default is 300 s; the worker
# SIGKILL scenario runs with it, as heartbeats must bring a dead worker's messages back); the
# backoff cap stays below it, so a retry waiting for its countdown is not restored as well.
FAULT_ENV = {
    "CONTACTSYNC_VISIBILITY_TIMEOUT_SECONDS": "10",
    "CONTACTSYNC_RETRY_BACKOFF_MAX_SECONDS": "2",
    "CONTACTSYNC_MAX_RETRIES": "8",
    "CONTACTSYNC_RELAY_INTERVAL_SECONDS": "0.05",
    "CONTACTSYNC_MAX_BACKLOG": "10000000",
    "CONTACTSYNC_WORKER_METRICS_PORT": "0",  # several workers on one host: no shared port
    "CONTACTSYNC_LOG_FORMAT": "text",
}


def postgres_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3):
            return True
    except Exception:
        return False


def fresh_database() -> str:
    """Create this run's faults database, migrated to the newest schema; return its URL."""
    name = f"{FAULTS_DB_PREFIX}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{base}/{name}"
    upgrade(url)
    return url


def drop_database(url: str) -> None:
    """Drop a database `fresh_database` made (its connections are cut)."""
    name = url.rsplit("/", 1)[1]
    assert name.startswith(FAULTS_DB_PREFIX)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_tables(db: Database) -> None:
    with db.unit_of_work() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())


class RedisServer:
    """A redis-server of the scenario's own, on a fixed loopback port, with its files kept."""

    def __init__(self, data_dir: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Process | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.process = start_redis(self.log_dir / f"redis-{self.port}.log", self.port,
                                   self.data_dir, appendonly=True)

    def ping(self) -> bool:
        client = Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final write; what survives is what the files hold."""
        assert self.process is not None
        self.process.popen.send_signal(signal.SIGKILL)
        self.process.popen.wait(10)
        self.process.stop()

    def wipe(self) -> None:
        """Delete every file the server wrote (the append-only file and any snapshot)."""
        for path in self.data_dir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def restart_postgres() -> float:
    """Restart the machine's PostgreSQL; return how long it took."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True, capture_output=True, timeout=120,
    )
    wait_until(postgres_available, timeout=60, interval=0.2)
    return time.monotonic() - started


@dataclass
class Stack:
    """A scenario's processes on one Redis and one database."""

    database_url: str
    redis: RedisServer
    log_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    workers: dict[str, Process] = field(default_factory=dict)
    gateways: dict[str, tuple[Process, int]] = field(default_factory=dict)
    _starts: int = 0

    def env(self) -> dict[str, str]:
        return service_env(self.database_url, self.redis.url, **{**FAULT_ENV, **self.env_extra})

    def start_worker(
        self, name: str, concurrency: int = 2, redis_url: str | None = None
    ) -> Process:
        """Start a Celery worker named `name` (its node name stays the same across restarts)."""
        self._starts += 1
        args = worker_args(f"faults-{os.getpid()}-{name}", concurrency, queues=QUEUES,
                           heartbeat=False)
        log = self.log_dir / f"worker-{name}-{self._starts}.log"
        env = self.env()
        if redis_url is not None:
            env["REDIS_URL"] = redis_url
        process = Process(args, env, log)
        self.workers[name] = process
        return process

    def wait_workers(self, timeout: float = 60) -> None:
        for process in self.workers.values():
            wait_until(partial(_has_line, process, "ready."), timeout=timeout, interval=0.2)

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group: main process, pool and relay at once."""
        process = self.workers.pop(name)
        os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(10)
        process.stop()

    def freeze_pool(self, name: str) -> int:
        """SIGSTOP the worker's pool processes: its main process goes on taking messages and
        holds them, as it does while its tasks wait on a slow database. Return how many."""
        main = self.workers[name].popen.pid
        argv = Path(f"/proc/{main}/cmdline").read_bytes()
        frozen = 0
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                same = (proc / "cmdline").read_bytes() == argv  # forked: not the relay
            except (OSError, IndexError, ValueError):
                continue
            if parent == main and same:
                os.kill(int(proc.name), signal.SIGSTOP)
                frozen += 1
        return frozen

    def terminate_worker(self, name: str, timeout: float = 60) -> float:
        """SIGTERM the worker's main process (warm shutdown); return how long it took to exit."""
        process = self.workers.pop(name)
        started = time.monotonic()
        process.popen.send_signal(signal.SIGTERM)
        process.popen.wait(timeout)
        took = time.monotonic() - started
        process.stop()
        return took

    def start_gateway(self, name: str) -> str:
        port = free_port()
        args = [
            sys.executable, "-m", "uvicorn", "api_gateway.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]
        process = Process(args, self.env(), self.log_dir / f"gateway-{name}.log")
        self.gateways[name] = (process, port)
        return f"http://127.0.0.1:{port}"

    def wait_gateways(self, timeout: float = 60) -> None:
        for _, port in self.gateways.values():
            url = f"http://127.0.0.1:{port}/readyz"
            wait_until(partial(_answers, url), timeout=timeout)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.gateways[name][1]}"

    def client(self) -> Redis:
        return Redis.from_url(self.redis.url, socket_connect_timeout=2, socket_timeout=10)

    def close(self) -> None:
        for process, _ in self.gateways.values():
            process.stop()
        for process in self.workers.values():
            process.stop(timeout=30)
        self.gateways.clear()
        self.workers.clear()
        self.redis.stop()


def _has_line(process: Process, text: str) -> bool:
    return text in process.log()


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


@dataclass
class Tenant:
    account_id: str
    key: str
    contact_ids: list[str]


def seed(db: Database, contacts: int) -> Tenant:
    """Create an account, a key without a practical rate limit, and `contacts` contacts."""
    with db.unit_of_work() as session:
        row, key = create_key(
            session, "faults", ["contacts:read", "contacts:write"],
            rate_limit_per_second=1_000_000,
        )
        ids = [
            create_contact(session, row.account_id, {"name": f"Contact {i}"}).id
            for i in range(contacts)
        ]
        return Tenant(row.account_id, key, ids)
