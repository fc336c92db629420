"""Helpers of the operating tests: the real `contactsync` commands, scrapes, JSON log lines."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from contactsync.settings import Settings
from tests.e2e.gateways import private_redis
from tests.support import Process, free_port, service_env, wait_until

BIN = Path(sys.executable).parent
CONTACTSYNC = str(BIN / "contactsync")


def contactsync(args: list[str], env: dict[str, str], log_path: Path) -> Process:
    """Start `contactsync ARGS` as an operator would, its output in `log_path`."""
    return Process([CONTACTSYNC, *args], env, log_path)


def wait_http_ok(url: str, timeout: float = 30, **kwargs: Any) -> httpx.Response:
    """Return the first 200 answer of `url`."""

    def probe() -> httpx.Response | None:
        response = httpx.get(url, timeout=2, **kwargs)
        return response if response.status_code == 200 else None

    return wait_until(probe, timeout=timeout, interval=0.2)


def wait_worker_ready(process: Process, timeout: float = 45) -> None:
    def probe() -> bool:
        assert process.popen.poll() is None, process.log()[-3000:]
        return "ready." in process.log()

    wait_until(probe, timeout=timeout, interval=0.1)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the Prometheus text format: {(sample name, labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """Return the sum of the samples of `name` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and wanted <= ls)


def json_lines(log: str) -> list[dict[str, Any]]:
    """Return the log's JSON lines (Celery's banner and the like are not JSON)."""
    entries = []
    for line in log.splitlines():
        if line.startswith("{"):
            entries.append(orjson.loads(line))
    return entries


def stop_gently(process: Process, timeout: float = 60) -> int | None:
    """SIGTERM the main process only (as `docker stop` does) and wait for it to exit."""
    if process.popen.poll() is None:
        os.kill(process.popen.pid, signal.SIGTERM)
        process.popen.wait(timeout)
    return process.stop()


def hostname() -> str:
    return socket.gethostname()


@dataclass
class Services:
    """A gateway and a worker of their own, on a Redis server no other worker reads."""

    gateway_url: str
    metrics_url: str
    redis_url: str
    gateway: Process
    worker: Process
    env: dict[str, str]


@contextmanager
def own_services(
    settings: Settings, log_dir: Path, *, gateway_workers: int = 1, concurrency: int = 2,
    **extra: str,
) -> Iterator[Services]:
    """Run `contactsync gateway` and `contactsync worker` on the test database."""
    with ExitStack() as resources:
        redis_url = resources.enter_context(private_redis(log_dir))
        metrics_port, gateway_port = free_port(), free_port()
        env = service_env(settings.database_url, redis_url, **{
            "CONTACTSYNC_KEY_CACHE_SECONDS": "0",
            "CONTACTSYNC_WORKER_METRICS_PORT": str(metrics_port), **extra,
        })
        worker = contactsync(
            ["worker", "--concurrency", str(concurrency)], env, log_dir / "worker.log"
        )
        resources.callback(worker.stop, 60)
        gateway = contactsync(
            ["gateway", "--port", str(gateway_port), "--workers", str(gateway_workers)],
            env, log_dir / "gateway.log",
        )
        resources.callback(gateway.stop)
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_http_ok(f"{gateway_url}/readyz")
        wait_worker_ready(worker)
        yield Services(
            gateway_url, f"http://127.0.0.1:{metrics_port}/metrics", redis_url, gateway, worker,
            env,
        )
