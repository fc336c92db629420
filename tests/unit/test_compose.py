"""docker-compose.yml names only real commands, options and settings (no Docker here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import build_parser
from contactsync.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_SERVICES = ["migrate", "gateway", "worker", "webhooks", "flower"]


def test_compose_runs_the_production_shape() -> None:
    assert set(SERVICES) == {"redis", "postgres", *APP_SERVICES}
    redis_command = SERVICES["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert SERVICES["migrate"]["restart"] == "no"
    assert "ports" not in SERVICES["worker"], "workers must scale with --scale worker=N"
    assert "ports" not in SERVICES["webhooks"], "so must webhook workers"
    # Webhook deliveries on workers of their own: a slow receiver never holds an update.
    webhooks = SERVICES["webhooks"]["command"]
    assert webhooks[webhooks.index("--queues") + 1] == "webhooks"
    assert "--queues" not in SERVICES["worker"]["command"]
    for name in ("gateway", "worker", "webhooks", "flower"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    for name in SERVICES:
        if name != "migrate":
            assert "healthcheck" in SERVICES[name], name


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_command_is_a_real_contactsync_subcommand(service: str) -> None:
    command = SERVICES[service]["command"]
    assert command[0] == "contactsync"
    args = build_parser().parse_args(command[1:])  # exits (fails the test) on a bad option
    assert callable(args.handler)


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_variable_is_a_real_setting(service: str) -> None:
    known = {f"CONTACTSYNC_{name.upper()}" for name in Settings.model_fields}
    known |= {"DATABASE_URL", "REDIS_URL"}
    for variable in SERVICES[service]["environment"]:
        assert variable in known, f"{service} sets {variable}, which no setting reads"


def test_ports_match_the_commands() -> None:
    for service, flag in (("gateway", "--port"), ("flower", "--port")):
        command = SERVICES[service]["command"]
        port = command[command.index(flag) + 1]
        assert SERVICES[service]["ports"] == [f"{port}:{port}"]
        assert f":{port}/" in " ".join(SERVICES[service]["healthcheck"]["test"])


def test_env_example_covers_every_variable_compose_needs() -> None:
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", (ROOT / "docker-compose.yml").read_text()))
    assert needed <= defined


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match.group(1))


def test_stopping_leaves_time_to_drain() -> None:
    drain = Settings.model_fields["graceful_shutdown_seconds"].default
    # Docker sends SIGTERM, then SIGKILL after stop_grace_period (10 s unless set).
    assert _seconds(SERVICES["gateway"]["stop_grace_period"]) > drain
    assert _seconds(SERVICES["worker"]["stop_grace_period"]) >= 30


def test_every_long_running_service_restarts_and_checks_its_health() -> None:
    for name in ("redis", "postgres", "gateway", "worker", "webhooks", "flower"):
        assert SERVICES[name]["restart"] == "unless-stopped", name
    ping = SERVICES["worker"]["healthcheck"]["test"]
    assert ping[0] == "CMD-SHELL"
    # $$ is compose's escaped $: the shell in the container reads its own HOSTNAME, which is
    # the worker's default node name (celery@<hostname>).
    assert "celery -A worker.app inspect ping -d celery@$$HOSTNAME" in ping[1]


def test_worker_metrics_are_reachable_without_publishing_a_port() -> None:
    worker = SERVICES["worker"]
    port = worker["environment"]["CONTACTSYNC_WORKER_METRICS_PORT"]
    assert worker["environment"]["CONTACTSYNC_WORKER_METRICS_ADDRESS"] == "0.0.0.0"
    assert worker["expose"] == [port]
    assert "ports" not in worker
    for name in APP_SERVICES:  # machines read the logs: one JSON object a line
        assert SERVICES[name]["environment"]["CONTACTSYNC_LOG_FORMAT"] == "json", name
