"""docker-compose.yml names only real commands, options and settings (no Docker here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from contactsync.cli import build_parser
from contactsync.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_SERVICES = ["migrate", "gateway", "worker", "flower"]


def test_compose_runs_the_production_shape() -> None:
    assert set(SERVICES) == {"redis", "postgres", *APP_SERVICES}
    redis_command = SERVICES["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert SERVICES["migrate"]["restart"] == "no"
    assert "ports" not in SERVICES["worker"], "workers must scale with --scale worker=N"
    for name in ("gateway", "worker", "flower"):
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
