"""Helpers shared by the tests: services, free ports, processes, waiting."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from bench.processes import ROOT, Process, free_port, service_env, wait_until

__all__ = ["ROOT", "Process", "free_port", "service_env", "wait_until"]


def require_service(name: str, ok: bool) -> None:
    """Skip when a service is missing on a laptop; fail in CI, where it must be there."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not answering, and CI must have it")
    pytest.skip(f"{name} is not answering")


def start_worker(env: dict[str, str], log_path: Path) -> Process:
    args = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "prefork",
        "--concurrency", "1", "-Q", "contacts.updates,contacts.bulk", "-E",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        "--hostname", f"test-{os.getpid()}-{log_path.stem}@%h",
    ]
    return Process(args, env, log_path)


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
