"""Helpers of the webhook tests: endpoints inserted as the store makes them, a receiver
process (tests/webhook_receiver.py) that records what it is sent, and delivery workers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from redis import Redis
from sqlalchemy import select

from contactsync.db import Database
from contactsync.models import Account, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.webhook_endpoints import announce_change
from contactsync.webhook_secrets import new_secret, seal
from tests.support import ROOT, Process, free_port, service_env, wait_until, worker_args

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


def start_delivery_workers(
    settings: Settings, logs: Path, name: str, count: int = 1, *, allow_insecure: bool,
    retry_for_seconds: float | None = None, disable_after_seconds: float | None = None,
    each: list[dict[str, str]] | None = None, **extra: str,
) -> list[Process]:
    """Start `count` delivery workers (two pool processes each, the webhooks queue only) with
    timeouts and retries of a second, wait until each is ready, and return them. `each`: the
    environment of each worker on top (a metrics port, say); `extra`: of all of them, over
    these defaults."""
    env = service_env(settings.database_url, settings.redis_url, **{
        **webhook_env(),
        # Short enough for a test, long enough for a busy machine: retries within a second.
        "CONTACTSYNC_WEBHOOKS_ALLOW_INSECURE": str(allow_insecure).lower(),
        "CONTACTSYNC_WEBHOOK_TIMEOUT_SECONDS": "1",
        "CONTACTSYNC_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "CONTACTSYNC_WEBHOOK_RETRY_MAX_SECONDS": "0.5",
        **({"CONTACTSYNC_WEBHOOK_RETRY_FOR_SECONDS": str(retry_for_seconds)}
           if retry_for_seconds is not None else {}),
        **({"CONTACTSYNC_WEBHOOK_DISABLE_AFTER_SECONDS": str(disable_after_seconds)}
           if disable_after_seconds is not None else {}),
        **extra,
    })
    workers = [
        Process(worker_args(f"{name}-{i}", concurrency=2, queues="webhooks"),
                {**env, **(each[i] if each else {})}, logs / f"{name}-{i}.log")
        for i in range(count)
    ]
    try:
        for worker in workers:
            wait_until(lambda w=worker: "ready." in w.log(), timeout=60)
    except AssertionError:
        for worker in workers:
            worker.stop()
        raise
    return workers


def make_endpoint(
    db: Database, settings: Settings, account_id: str, url: str,
    events: list[str] | None = None, enabled: bool = True,
) -> tuple[str, str]:
    """Insert an endpoint as the store does, and tell the relays as it does; return its id and
    its (plain) secret."""
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
    redis = Redis.from_url(settings.redis_url)
    try:
        announce_change(redis)
    finally:
        redis.close()
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
    `record` (path, headers, body); `/status/<code>` answers that code, `/sleep/<s>` sleeps,
    `/hold/...` waits for `release()`."""

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

    def release(self) -> None:
        """Answer the requests held on `/hold/...` paths, and from now on at once."""
        Path(f"{self.record}.release").touch()

    def stop(self) -> None:
        self.process.stop(5)
