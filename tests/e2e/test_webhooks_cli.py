"""`contactsync webhooks add|list|remove|deliveries|replay`, run as an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from contactsync.db import Database
from contactsync.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from contactsync.timeutil import isoformat, utcnow
from contactsync.webhook_secrets import unseal
from tests.conftest import make_tenant
from tests.support import ROOT, service_env

pytestmark = pytest.mark.slow  # a CLI process per step

URL = "https://93.184.216.34/hook"


def _run(db: Database, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "webhooks", *args],
        env=service_env(db.settings.database_url, db.settings.redis_url, **env), cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "error: " in lines[0], result.stderr
    return lines[0]


def _add(db: Database, account: str = "acme") -> tuple[str, str]:
    result = _run(db, "add", URL, "--account", account, "--event", "contact.updated",
                  "--event", "contact.deleted", "--description", "CRM sync")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    webhook_id = lines[0].split()[1]
    return webhook_id, lines[-1]


def test_add_list_remove(db: Database) -> None:
    make_tenant(db, "acme", ["webhooks:manage"])
    make_tenant(db, "globex", ["webhooks:manage"])
    webhook_id, secret = _add(db)
    assert secret.startswith("whsec_") and len(secret) == 38, secret  # alone on its line
    with db.reading() as session:
        stored = session.get(WebhookEndpoint, webhook_id)
        assert stored is not None
        assert stored.events == ["contact.deleted", "contact.updated"]
        assert unseal(stored.secret_ciphertext, db.settings) == secret

    listed = _run(db, "list", "--account", "acme")
    assert listed.returncode == 0, listed
    assert webhook_id in listed.stdout and URL in listed.stdout and "enabled" in listed.stdout
    assert secret not in listed.stdout + listed.stderr
    other = _run(db, "list", "--account", "globex")
    assert webhook_id not in other.stdout and "no webhooks yet" in other.stdout

    removed = _run(db, "remove", webhook_id)
    assert removed.returncode == 0 and webhook_id in removed.stdout, removed
    assert "no webhook" in _refused(_run(db, "remove", webhook_id))
    with db.reading() as session:
        assert session.scalars(select(WebhookEndpoint)).all() == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["add", "https://127.0.0.1/hook", "--account", "acme", "--event", "contact.updated"],
         "loopback"),
        (["add", "http://93.184.216.34/", "--account", "acme", "--event", "contact.updated"],
         "https://"),
        (["add", "https://169.254.169.254/", "--account", "acme", "--event", "contact.updated"],
         "link-local"),
        (["add", URL, "--account", "nobody", "--event", "contact.updated"], "no account"),
        (["add", URL, "--account", "acme", "--event", "contact.merged"], "invalid choice"),
        (["add", URL, "--account", "acme"], "--event"),
        (["add", "not a url", "--account", "acme", "--event", "contact.updated"], "url"),
        (["list", "--account", "nobody"], "no account"),
        (["deliveries", "whk_none"], "no webhook"),
        (["replay", "whk_none", "--since", "2024-01-15T10:30:00Z"], "no webhook"),
        (["replay", "whk_none", "--since", "2024-01-15"], "RFC 3339"),
    ],
)
def test_bad_input_is_one_line(db: Database, args: list[str], says: str) -> None:
    make_tenant(db, "acme", ["webhooks:manage"])
    assert says in _refused(_run(db, *args))
    with db.reading() as session:
        assert session.scalars(select(WebhookEndpoint)).all() == []


def test_insecure_urls_when_allowed(db: Database) -> None:
    make_tenant(db, "acme", ["webhooks:manage"])
    result = _run(db, "add", "http://127.0.0.1:9000/hook", "--account", "acme", "--event",
                  "contact.updated", CONTACTSYNC_WEBHOOKS_ALLOW_INSECURE="1")
    assert result.returncode == 0, result


def test_deliveries_and_replay(db: Database) -> None:
    tenant = make_tenant(db, "acme", ["webhooks:manage"])
    webhook_id, _ = _add(db)
    now = utcnow()
    with db.unit_of_work() as session:
        session.add(WebhookEvent(
            event_id="evt_cli1", account_id=tenant.account_id, contact_id="cnt_aaaaaaaaaaaa",
            type="contact.updated", sequence=1, occurred_at=now - timedelta(minutes=5),
            payload="{}",
        ))
        delivery = WebhookDelivery(
            endpoint_id=webhook_id, event_id="evt_cli1", contact_id="cnt_aaaaaaaaaaaa",
            sequence=1, status="failed", attempts=1, next_attempt_at=now, created_at=now,
            finished_at=now,
        )
        session.add(delivery)
        session.flush()
        session.add(WebhookAttempt(
            delivery_id=delivery.id, endpoint_id=webhook_id, event_id="evt_cli1",
            attempted_at=now, status_code=502, duration_ms=321, error="HTTP 502",
        ))
    shown = _run(db, "deliveries", webhook_id)
    assert shown.returncode == 0, shown
    assert "evt_cli1" in shown.stdout and "502" in shown.stdout and "321 ms" in shown.stdout
    replayed = _run(db, "replay", webhook_id, "--since", isoformat(now - timedelta(hours=1)))
    assert replayed.returncode == 0, replayed
    assert replayed.stdout.startswith("1 event since"), replayed.stdout
    with db.reading() as session:
        status = session.scalar(select(WebhookDelivery.status))
    assert status == "pending"
