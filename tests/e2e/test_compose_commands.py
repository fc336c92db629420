"""docker-compose.yml's own commands, run outside Docker and hit with its own health checks.

Each app service's command and environment are read from the compose file (with `.env.example`
for its variables), pointed at the test PostgreSQL and a private Redis, with free ports in place
of the published ones; then each service's health-check command must pass, as Docker runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contactsync.db import Database
from contactsync.settings import Settings
from tests.conftest import make_contact, make_tenant
from tests.e2e.gateways import private_redis
from tests.e2e.ops import BIN, hostname
from tests.support import ROOT, Process, free_port, wait_until

pytestmark = pytest.mark.slow  # every compose service's command and health check

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
EXAMPLE = dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
LONG_RUNNING = ("gateway", "worker", "flower")


def _expand(text: str) -> str:
    """Substitute variables as compose does: ${VAR}, ${VAR:-default}, and $$ for a dollar."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return EXAMPLE.get(name) or default or ""

    return re.sub(r"\$\{([A-Z_]+)(:-([^}]*))?\}", one, text).replace("$$", "$")


def _env(service: str, overrides: dict[str, str]) -> dict[str, str]:
    env = {k: _expand(str(v)) for k, v in SERVICES[service].get("environment", {}).items()}
    env.update(overrides)
    return env


def _published_port(service: str) -> str | None:
    command: list[str] = SERVICES[service]["command"]
    return command[command.index("--port") + 1] if "--port" in command else None


def _command(service: str, port: int | None) -> list[str]:
    command = [_expand(part) for part in SERVICES[service]["command"]]
    for flag in ("--host", "--address"):
        if flag in command:  # the test listens on loopback only
            command[command.index(flag) + 1] = "127.0.0.1"
    if port is not None:
        command[command.index("--port") + 1] = str(port)
    return command


def _healthcheck(service: str, port: int | None) -> list[str]:
    test = [_expand(part) for part in SERVICES[service]["healthcheck"]["test"]]
    published = _published_port(service)
    if published is not None and port is not None:
        test = [part.replace(f":{published}/", f":{port}/") for part in test]
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1]]
    assert test[0] == "CMD", test
    return test[1:]


def _run(
    command: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture
def compose_db(backend: str, request: pytest.FixtureRequest) -> Database:
    if backend != "postgresql":
        pytest.skip("the compose file runs PostgreSQL")
    db: Database = request.getfixturevalue("db")
    return db


@pytest.fixture
def base_env(compose_db: Database, settings: Settings, tmp_path: Path) -> Iterator[dict[str, str]]:
    with private_redis(tmp_path) as redis_url:
        yield {
            # The image's PATH: `contactsync`, `celery` and `python` are the installed ones.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOSTNAME": hostname(),  # Docker sets it to the container's host name
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": redis_url,
            "CONTACTSYNC_WORKER_METRICS_PORT": str(free_port()),
            "CONTACTSYNC_WORKER_METRICS_ADDRESS": "127.0.0.1",
        }


def test_the_compose_commands_start_and_pass_their_health_checks(
    base_env: dict[str, str], compose_db: Database, tmp_path: Path
) -> None:
    db = compose_db
    migrate = _run(_command("migrate", None), _env("migrate", base_env))
    assert migrate.returncode == 0, migrate.stderr
    ports = {name: free_port() if _published_port(name) else None for name in LONG_RUNNING}
    processes = {
        name: Process(_command(name, ports[name]), _env(name, base_env), tmp_path / f"{name}.log")
        for name in LONG_RUNNING
    }
    try:
        for name in LONG_RUNNING:
            env = _env(name, base_env)

            def healthy(name: str = name, env: dict[str, str] = env) -> bool:
                assert processes[name].popen.poll() is None, processes[name].log()[-3000:]
                return _run(_healthcheck(name, ports[name]), env, timeout=30).returncode == 0

            wait_until(healthy, timeout=90, interval=0.5)
        _check_the_services_work(base_env, db, ports)
    finally:
        for process in processes.values():
            process.stop(60)


def _check_the_services_work(
    env: dict[str, str], db: Database, ports: dict[str, int | None]
) -> None:
    # The health check can fail: the same ping to a worker that does not exist does.
    ping = _healthcheck("worker", None)
    wrong = [part.replace("$HOSTNAME", "nobody-here") for part in ping]
    assert _run(wrong, _env("worker", env)).returncode != 0
    # The stack answers an update end to end, under the compose file's production settings.
    tenant = make_tenant(db, "compose")
    contact_id = make_contact(db, tenant.account_id)
    response = httpx.put(
        f"http://127.0.0.1:{ports['gateway']}/external/v1/contacts/{contact_id}",
        json={"position": "CTO"}, headers={"X-API-Key": tenant.key}, timeout=20,
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["position"] == "CTO"
    flower = f"http://127.0.0.1:{ports['flower']}"
    user, password = EXAMPLE["CONTACTSYNC_FLOWER_BASIC_AUTH"].split(":", 1)
    assert httpx.get(f"{flower}/workers", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/workers", auth=(user, password), timeout=10).status_code == 200
