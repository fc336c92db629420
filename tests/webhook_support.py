"""Helpers of the webhook tests: endpoints inserted as the store makes them, and a receiver
process (tests/webhook_receiver.py) that records what it is sent."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import select

from contactsync.db import Database
from contactsync.models import Account, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.webhook_secrets import new_secret, seal
from tests.support import ROOT, Process, free_port, wait_until

ALL_EVENTS = ["contact.updated", "contact.created", "contact.deleted"]
# Fixed for the tests: the test process and the workers it starts seal and unseal alike.
SECRET_KEY = "test-webhook-secret-key-0123456789abcdef"
_endpoints = iter(range(1, 1_000_000))


def webhook_settings(settings: Settings, **extra: Any) -> Settings:
    """Return the session's settings with the test key and insecure URLs allowed."""
    return settings.model_copy(update={
        "webhook_secret_key": SecretStr(SECRET_KEY), "webhooks_allow_insecure": True, **extra,
    })


def webhook_env() -> dict[str, str]:
    """Return the environment a worker under test needs to deliver webhooks."""
    return {"CONTACTSYNC_WEBHOOK_SECRET_KEY": SECRET_KEY}


def make_endpoint(
    db: Database, settings: Settings, account_id: str, url: str,
    events: list[str] | None = None, enabled: bool = True,
) -> tuple[str, str]:
    """Insert an endpoint as the store does; return its id and its (plain) secret."""
    secret = new_secret()
    now = utcnow()
    endpoint_id = f"whk_test{next(_endpoints):08d}"
    with db.unit_of_work() as session:
        assert session.get(Account, account_id) is not None
        session.add(WebhookEndpoint(
            id=endpoint_id, account_id=account_id, url=url, events=events or ALL_EVENTS,
            description="", enabled=enabled,
            secret_ciphertext=seal(secret, webhook_settings(settings)),
            created_at=now, updated_at=now,
        ))
    return endpoint_id, secret


def deliveries(db: Database, endpoint_id: str) -> list[WebhookDelivery]:
    with db.reading() as session:
        return list(session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.id)
        ))


def attempts(db: Database, endpoint_id: str) -> list[WebhookAttempt]:
    with db.reading() as session:
        return list(session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.endpoint_id == endpoint_id)
            .order_by(WebhookAttempt.id)
        ))


def endpoint(db: Database, endpoint_id: str) -> WebhookEndpoint:
    with db.reading() as session:
        row = session.get(WebhookEndpoint, endpoint_id)
        assert row is not None
        return row


class Receiver:
    """A receiver process on a free loopback port: each request it gets is a JSON line in
    `record` (path, headers, body); `/status/<code>` answers that code, `/sleep/<s>` sleeps."""

    def __init__(self, tmp: Path, name: str = "receiver") -> None:
        self.port = free_port()
        self.record = tmp / f"{name}.jsonl"
        self.record.touch()
        self.process = Process(
            [sys.executable, "-m", "tests.webhook_receiver", str(self.port), str(self.record)],
            {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}, tmp / f"{name}.log",
        )
        try:
            wait_until(lambda: httpx.get(self.url("/health"), timeout=1).status_code == 204)
        except AssertionError:
            self.process.stop(5)
            raise

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        lines = self.record.read_text().splitlines()
        got = [json.loads(line) for line in lines if line.strip()]
        return [r for r in got if path is None or r["path"] == path]

    def stop(self) -> None:
        self.process.stop(5)
