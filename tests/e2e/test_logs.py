"""Logs: one JSON line per request and per finished update, no personal data, no keys;
the level from settings; plain text when a person runs `up` in a terminal."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contactsync.db import Database
from contactsync.settings import Settings
from tests.conftest import make_contact, make_tenant
from tests.e2e.gateways import private_redis
from tests.e2e.ops import CONTACTSYNC, Services, contactsync, json_lines, own_services, wait_http_ok
from tests.support import ROOT, free_port, service_env, wait_until

pytestmark = pytest.mark.slow  # gateways and workers of its own, to read their logs

EMAIL, NEW_EMAIL = "log.person@example.com", "log.person@example.org"
PHONE, NEW_PHONE = "+55 11 98888-7777", "+5511977776666"
POSITION = "Chief Logging Officer"
ACCESS_KEYS = {"ts", "level", "logger", "msg", "method", "route", "http_status", "duration_ms"}


def _since(log: str, offset: int) -> list[str]:
    return [line for line in log[offset:].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def services(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    """A gateway and a worker of their own: their logs hold only what this module did."""
    with own_services(
        settings, tmp_path_factory.mktemp("logs"), concurrency=1,
        CONTACTSYNC_WORKER_METRICS_PORT="0",
    ) as running:
        yield running


def test_each_request_and_each_update_is_one_json_line(services: Services, db: Database) -> None:
    tenant = make_tenant(db, "logs")
    contact_id = make_contact(db, tenant.account_id, email=EMAIL, phone=PHONE)
    gateway, worker = services.gateway, services.worker
    gateway_start, worker_start = len(gateway.log()), len(worker.log())
    with httpx.Client(
        base_url=services.gateway_url, headers={"X-API-Key": tenant.key}, timeout=20
    ) as client:
        body = {"email": NEW_EMAIL, "phone": NEW_PHONE, "position": POSITION}
        assert client.put(f"/external/v1/contacts/{contact_id}", json=body).status_code == 200
        for _ in range(3):
            assert client.get("/healthz").status_code == 200

    def access_lines() -> list[dict[str, Any]] | None:
        entries = [e for e in json_lines(gateway.log()[gateway_start:])
                   if e["logger"] == "contactsync.access"]
        return entries if len(entries) >= 4 else None

    entries = wait_until(access_lines, timeout=10)
    assert [(e["method"], e["route"], e["http_status"]) for e in entries] == [
        ("PUT", "/external/v1/contacts/{contact_id}", 200), *[("GET", "/healthz", 200)] * 3
    ]
    for entry in entries:
        assert set(entry) == ACCESS_KEYS, entry
        assert entry["level"] == "info" and entry["msg"] == "request"
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(entry["ts"]))

    def update_lines() -> list[dict[str, Any]] | None:
        found = [e for e in json_lines(worker.log()[worker_start:])
                 if e.get("msg") == "update finished" and e.get("contact_id") == contact_id]
        return found or None

    (line,) = wait_until(update_lines, timeout=10)
    assert line["status"] == "applied" and line["level"] == "info"
    assert str(line["update_id"]).startswith("upd_")
    assert line["account_id"] == tenant.account_id
    assert sorted(line["changed_fields"]) == ["email", "phone", "position"]
    assert isinstance(line["apply_ms"], float) and isinstance(line["lag_ms"], float)

    gateway_log, worker_log = gateway.log(), worker.log()
    for secret in (tenant.key, EMAIL, NEW_EMAIL, PHONE, NEW_PHONE, POSITION):
        assert secret not in gateway_log and secret not in worker_log, secret
    # Everything the gateway, the worker and its outbox relay wrote meanwhile is one JSON
    # object a line.
    assert all(line.startswith("{") for line in _since(gateway_log, gateway_start))
    worker_lines = _since(worker_log, worker_start)
    assert worker_lines and all(line.startswith("{") for line in worker_lines), worker_lines


def test_the_level_comes_from_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("nothing here depends on the database")
    services: Services = request.getfixturevalue("services")
    port = free_port()
    env = {**services.env, "CONTACTSYNC_LOG_LEVEL": "WARNING"}
    quiet = contactsync(["gateway", "--port", str(port)], env, tmp_path / "quiet.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/readyz")
        for _ in range(5):
            assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/nowhere").status_code == 404
    finally:
        quiet.stop()
    log = quiet.log()
    assert "contactsync.access" not in log and "request" not in log
    assert "Uvicorn running" not in log  # uvicorn's own INFO lines obey the level too


class Terminal:
    """A process on a pseudo-terminal, as a person would run it; its screen kept as text."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self.process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def screen(self) -> str:
        return b"".join(self._chunks).decode(errors="replace").replace("\r\n", "\n")

    def ctrl_c(self, timeout: float = 60) -> int:
        """Press Ctrl-C: SIGINT to the whole foreground process group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            self._reader.join(5)
            os.close(self._master)


@pytest.fixture
def terminal_up(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Terminal, str]]:
    if backend != "sqlite":
        pytest.skip("`up` with nothing configured runs on SQLite")
    request.getfixturevalue("db")  # emptied first: `up` adds its demo account and contact
    settings: Settings = request.getfixturevalue("settings")
    with private_redis(tmp_path) as redis_url:
        port = free_port()
        env = service_env(
            settings.database_url, redis_url, CONTACTSYNC_WORKER_METRICS_PORT="0",
            CONTACTSYNC_FLOWER_BASIC_AUTH="ops:terminal-pass", TERM="dumb",
        )
        term = Terminal(
            [CONTACTSYNC, "up", "--port", str(port), "--flower-port", str(free_port())], env
        )
        try:
            yield term, f"http://127.0.0.1:{port}"
        finally:
            status = term.ctrl_c()
            (tmp_path / "screen.txt").write_text(term.screen())  # for a person to read
            assert status == 0, term.screen()[-3000:]


def test_up_in_a_terminal_logs_plain_text_and_prints_flower_credentials(
    terminal_up: tuple[Terminal, str],
) -> None:
    term, url = terminal_up
    wait_until(lambda: "contactsync is up." in term.screen(), timeout=90, interval=0.2)
    screen = term.screen()
    # The banner waits for the worker too: its example PUT is then applied, not left queued.
    assert -1 < screen.find(" ready.") < screen.index("contactsync is up."), screen
    assert "user: ops  password: terminal-pass" in screen
    key = re.search(r"API key\s+(csk_live_\S+)", screen)
    assert key, screen
    response = httpx.put(
        f"{url}/external/v1/contacts/cnt_abc123def456", headers={"X-API-Key": key.group(1)},
        json={"position": "VP of Engineering", "tags": ["hot-lead", "enterprise"]}, timeout=20,
    )
    assert response.status_code == 200, response.text
    finished = wait_until(
        lambda: [line for line in term.screen().splitlines() if "update finished" in line],
        timeout=20,
    )
    (line,) = finished
    assert " INFO " in line and "contact_id=cnt_abc123def456" in line and "status=applied" in line
    assert not line.lstrip().startswith("{")
    assert not [line for line in term.screen().splitlines() if line.startswith('{"ts"')]
    assert "john@example.com" not in term.screen()
