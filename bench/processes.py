"""Start and stop processes on loopback, wait for them: shared by bench and tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(probe: Callable[[], T | None], timeout: float = 20, interval: float = 0.05) -> T:
    """Return the first truthy value `probe` gives before `timeout`, or fail the test."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # the thing probed may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"gave up after {timeout}s (last error: {last_error!r})")


class Process:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, timeout: float = 15) -> int | None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def service_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """Return the environment for a gateway or worker under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
    env.update({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
                # Tests that scrape worker metrics set a free port of their own.
                "CONTACTSYNC_WORKER_METRICS_PORT": "0"})
    env.update(extra)
    return env


def _pings(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def start_redis(
    log_path: Path, port: int, data_dir: Path | None = None, *, appendonly: bool = False,
    timeout: float = 20,
) -> Process:
    """Start a redis-server on loopback `port` and wait until it answers. `appendonly`: with
    its append-only file, fsynced every second (the production setting)."""
    args = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
            "--port", str(port), "--save", ""]
    args += ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly else [
        "--appendonly", "no"]
    if data_dir is not None:
        args += ["--dir", str(data_dir)]
    process = Process(args, {"PATH": os.environ.get("PATH", "")}, log_path)
    wait_until(lambda: _pings(port), timeout=timeout)
    return process


def worker_args(
    hostname: str, concurrency: int = 1, *, app: str = "worker.app",
    queues: str = "contacts.updates,contacts.bulk", loglevel: str = "INFO",
    heartbeat: bool = True,
) -> list[str]:
    """Return the command of a Celery worker (prefork pool, task events on) named `hostname`."""
    args = [
        sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "prefork",
        "--concurrency", str(concurrency), "-Q", queues, "-E", "--without-gossip",
        "--without-mingle", "--loglevel", loglevel, "--hostname", f"{hostname}@%h",
    ]
    if "webhooks" in queues.split(","):
        args.append("--disable-prefetch")  # as `contactsync worker` runs them (cli/services.py)
    return args if heartbeat else [*args, "--without-heartbeat"]
