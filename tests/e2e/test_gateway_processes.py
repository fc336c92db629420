"""`contactsync gateway --workers N`: a socket of its own per process (api_gateway/processes.py),
so connections spread over the processes; a dead process is replaced; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.services import socket_pids
from contactsync.settings import Settings
from tests.e2e.gateways import private_redis
from tests.e2e.ops import CONTACTSYNC, contactsync, stop_gently, wait_http_ok
from tests.support import ROOT, Process, free_port, service_env, wait_until

pytestmark = pytest.mark.slow  # gateways killed and started again


def _children(pid: int) -> set[int]:
    # Every thread's: a process started again is started by the thread that watched it.
    return {int(p) for children in Path(f"/proc/{pid}/task").glob("*/children")
            for p in children.read_text().split()}


def _gateway_processes(parent: int) -> set[int]:
    # Spawned processes, not counting multiprocessing's own helper (it serves no port).
    return {p for p in _children(parent)
            if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()}


def _only_once(backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("backend-independent: run once, on the SQLite stack")


@contextmanager
def _two_process_gateway(settings: Settings, tmp_path: Path) -> Iterator[tuple[Process, int, str]]:
    """`contactsync gateway --workers 2`, ready; yield it, its port and its Redis URL."""
    with private_redis(tmp_path) as redis_url:
        port = free_port()
        gateway = contactsync(
            ["gateway", "--port", str(port), "--workers", "2"],
            service_env(settings.database_url, redis_url), tmp_path / "gateway.log",
        )
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/readyz")
            yield gateway, port, redis_url
        finally:
            gateway.stop()


def _launch(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `contactsync gateway --workers 2` on `port` to its end."""
    return subprocess.run([CONTACTSYNC, "gateway", "--port", str(port), "--workers", "2"],
                          env=env, capture_output=True, text=True, timeout=60)


def test_connections_spread_over_the_processes_and_a_dead_one_is_replaced(
    settings: Settings, tmp_path: Path, backend: str
) -> None:
    _only_once(backend)
    with _two_process_gateway(settings, tmp_path) as (gateway, port, redis_url):
        wait_until(lambda: len(_gateway_processes(gateway.popen.pid)) == 2, timeout=30)
        workers = _gateway_processes(gateway.popen.pid)
        # /readyz answered from one process; the other may still be starting.
        wait_until(lambda: set(socket_pids(port, "listening")) == workers, timeout=30)
        # Forty kept-alive connections, as an integration's pool holds them: each process
        # gets its share (under one shared socket, one often took nearly all).
        connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        try:
            wait_until(lambda: sum(socket_pids(port, "established").values()) == 40, timeout=10)
            held = socket_pids(port, "established")
        finally:
            for connection in connections:
                connection.close()
        assert set(held) == workers, (held, workers)
        assert min(held.values()) >= 5, held

        # A second gateway on the same port does not join this one's sockets.
        second = _launch(port, service_env(settings.database_url, redis_url))
        assert second.returncode != 0
        assert "Address already in use" in second.stderr.strip(), second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr

        os.kill(next(iter(workers)), signal.SIGKILL)
        wait_until(lambda: len(_gateway_processes(gateway.popen.pid) - workers) == 1,
                   timeout=30)
        wait_http_ok(f"http://127.0.0.1:{port}/readyz")
        assert "a gateway process exited (code -9); starting it again" in gateway.log()
        left = _gateway_processes(gateway.popen.pid)
        assert stop_gently(gateway, timeout=60) == 0
        assert not any(Path(f"/proc/{p}").exists() for p in left)


def test_a_port_another_program_holds_is_one_line_of_error(
    settings: Settings, backend: str
) -> None:
    _only_once(backend)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _launch(taken.getsockname()[1],
                         service_env(settings.database_url, "redis://127.0.0.1:1/0"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Address already in use" in lines[0], result.stderr


def test_the_processes_stop_when_their_launcher_is_killed(
    settings: Settings, tmp_path: Path, backend: str
) -> None:
    # Left running, they would go on sharing the port with whatever starts on it next.
    _only_once(backend)
    with _two_process_gateway(settings, tmp_path) as (gateway, _, _):
        workers = wait_until(lambda: _gateway_processes(gateway.popen.pid), timeout=30)
        os.kill(gateway.popen.pid, signal.SIGKILL)
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in workers), timeout=30)


def test_an_application_that_cannot_start_stops_the_launcher(backend: str) -> None:
    # Started again and again it would fail the same way: exit, as one uvicorn process does.
    _only_once(backend)
    launch = (
        "from api_gateway import processes; raise SystemExit(processes.serve("
        f"{{'app': 'no_such_module:app', 'host': '127.0.0.1', 'port': {free_port()}}}, 2, 10))"
    )
    result = subprocess.run([sys.executable, "-c", launch], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "a gateway process could not start; stopping" in result.stderr
