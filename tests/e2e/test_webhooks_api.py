"""The webhook endpoints API (DESIGN §4) against a real gateway: the whole life of an endpoint,
tenancy, the permission, and the SSRF rules with insecure URLs refused and then allowed."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from contactsync.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from contactsync.timeutil import isoformat, utcnow
from contactsync.webhook_secrets import signing_secrets, unseal
from tests.conftest import Stack
from tests.e2e.gateways import extra_gateway
from tests.e2e.helpers import TIME, api, assert_bad_fields, assert_error, new_tenant

MANAGE = ["webhooks:manage"]
HOOKS = "/external/v1/webhooks"
URL = "https://93.184.216.34/hook"  # a public address: accepted without DNS
ENDPOINT_KEYS = {"id", "url", "events", "enabled", "description", "created_at", "updated_at",
                 "disabled_reason"}
SECRET = re.compile(r"^whsec_[A-Za-z0-9+/]{32}$")


def _register(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post(HOOKS, json={"url": URL, "events": ["contact.updated"], **body})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def _stored(stack: Stack, webhook_id: str) -> WebhookEndpoint | None:
    with stack.db.reading() as session:
        return session.get(WebhookEndpoint, webhook_id)


def test_an_endpoint_from_registration_to_removal(stack: Stack) -> None:
    client = api(stack, new_tenant(stack, "acme", MANAGE).key)
    created = _register(client, events=["contact.deleted", "contact.updated"], description="CRM")
    secret = created.pop("secret")
    assert SECRET.match(secret), secret
    Webhook(secret)  # the reference library takes it as it is
    assert set(created) == ENDPOINT_KEYS
    assert created["id"].startswith("whk_") and TIME.match(created["created_at"])
    assert (created["url"], created["events"], created["enabled"], created["description"]) == (
        URL, ["contact.deleted", "contact.updated"], True, "CRM")
    webhook = f"{HOOKS}/{created['id']}"
    stored = _stored(stack, created["id"])
    assert stored is not None and secret not in stored.secret_ciphertext
    assert unseal(stored.secret_ciphertext, stack.settings) == secret

    # Read back: never the secret.
    listed = client.get(HOOKS)
    assert listed.status_code == 200 and listed.json()["data"]["webhooks"] == [created]
    assert client.get(webhook).json()["data"] == created
    assert secret not in listed.text

    changed = client.patch(webhook, json={"events": ["contact.created"], "enabled": False})
    assert changed.status_code == 200, changed.text
    data = changed.json()["data"]
    assert (data["events"], data["enabled"], data["url"]) == (["contact.created"], False, URL)
    assert data["disabled_reason"]
    enabled = client.patch(webhook, json={"enabled": True, "url": URL + "2", "description": ""})
    assert enabled.json()["data"]["disabled_reason"] is None, enabled.text
    assert enabled.json()["data"]["url"] == URL + "2"

    rotated = client.post(f"{webhook}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["data"]["secret"]
    assert SECRET.match(new_secret) and new_secret != secret
    assert TIME.match(rotated.json()["data"]["previous_secret_expires_at"])
    stored = _stored(stack, created["id"])
    assert stored is not None
    assert signing_secrets(stored, utcnow(), stack.settings) == [new_secret, secret]
    assert signing_secrets(stored, utcnow() + timedelta(hours=24, seconds=5),
                           stack.settings) == [new_secret]

    removed = client.delete(webhook)
    assert removed.status_code == 200, removed.text
    assert removed.json()["success"] is True
    for response in (client.get(webhook), client.delete(webhook), client.patch(webhook, json={}),
                     client.post(f"{webhook}/rotate-secret"), client.get(f"{webhook}/deliveries")):
        assert_error(response, 404, "NOT_FOUND")
    assert client.get(HOOKS).json()["data"]["webhooks"] == []
    # The secrets were shown, never logged.
    log = stack.gateway.log()
    assert secret not in log and new_secret not in log


def _seed_events(stack: Stack, account_id: str, webhook_id: str) -> None:
    """Write what the delivery side would: kept events, a failed delivery and its attempts."""
    now = utcnow()
    with stack.db.unit_of_work() as session:
        for n, (kind, age) in enumerate([("contact.updated", 120), ("contact.updated", 30),
                                         ("contact.created", 20), ("contact.updated", 10)]):
            session.add(WebhookEvent(
                event_id=f"evt_seed{n}", account_id=account_id, contact_id="cnt_aaaaaaaaaaaa",
                type=kind, sequence=n, occurred_at=now - timedelta(minutes=age), payload="{}",
            ))
        delivery = WebhookDelivery(
            endpoint_id=webhook_id, event_id="evt_seed1", contact_id="cnt_aaaaaaaaaaaa",
            sequence=1, status="failed", attempts=2, next_attempt_at=now, created_at=now,
            finished_at=now,
        )
        session.add(delivery)
        session.flush()
        for n, (code, error) in enumerate([(503, "HTTP 503"), (None, "timed out after 10 s")]):
            session.add(WebhookAttempt(
                delivery_id=delivery.id, endpoint_id=webhook_id, event_id="evt_seed1",
                attempted_at=now - timedelta(minutes=2 - n), status_code=code,
                duration_ms=100 * (n + 1), error=error,
            ))


def test_deliveries_and_replay(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme", MANAGE)
    client = api(stack, tenant.key)
    webhook_id = _register(client)["id"]
    webhook = f"{HOOKS}/{webhook_id}"
    _seed_events(stack, tenant.account_id, webhook_id)

    page = client.get(f"{webhook}/deliveries", params={"limit": 1})
    assert page.status_code == 200, page.text
    first = page.json()["data"]
    assert [(a["status_code"], a["error"], a["duration_ms"]) for a in first["attempts"]] == [
        (None, "timed out after 10 s", 200)]
    assert first["attempts"][0]["event_id"] == "evt_seed1"
    assert first["attempts"][0]["delivery_status"] == "failed"
    assert TIME.match(first["attempts"][0]["attempted_at"])
    rest = client.get(f"{webhook}/deliveries", params={"cursor": first["next_cursor"]}).json()
    assert [a["status_code"] for a in rest["data"]["attempts"]] == [503]
    assert rest["data"]["next_cursor"] is None

    since = isoformat(utcnow() - timedelta(hours=1))
    replayed = client.post(f"{webhook}/replay", json={"since": since})
    assert replayed.status_code == 202, replayed.text
    # evt_seed0 is older, evt_seed2 a type the endpoint does not take.
    assert replayed.json()["data"]["deliveries"] == 2
    with stack.db.reading() as session:
        rows = session.execute(
            select(WebhookDelivery.event_id, WebhookDelivery.status, WebhookDelivery.attempts)
            .order_by(WebhookDelivery.sequence)
        ).all()
    assert [tuple(r) for r in rows] == [("evt_seed1", "pending", 0), ("evt_seed3", "pending", 0)]
    for body in ({"since": "2024-01-15T10:30:00"}, {"since": "yesterday"}, {"since": 1},
                 {}, {"since": since, "until": since}):
        assert_error(client.post(f"{webhook}/replay", json=body), 400, "VALIDATION_ERROR")


def test_another_account_sees_nothing_and_changes_nothing(stack: Stack) -> None:
    owner = api(stack, new_tenant(stack, "acme", MANAGE).key)
    other = api(stack, new_tenant(stack, "globex", MANAGE).key)
    created = _register(owner)
    created.pop("secret")
    webhook = f"{HOOKS}/{created['id']}"
    assert other.get(HOOKS).json()["data"]["webhooks"] == []
    for response in (
        other.get(webhook), other.patch(webhook, json={"enabled": False}),
        other.delete(webhook), other.post(f"{webhook}/rotate-secret"),
        other.get(f"{webhook}/deliveries"),
        other.post(f"{webhook}/replay", json={"since": "2024-01-15T10:30:00Z"}),
    ):
        error = assert_error(response, 404, "NOT_FOUND")
        assert error == assert_error(other.get(f"{HOOKS}/whk_{'0' * 20}"), 404, "NOT_FOUND")
    assert owner.get(webhook).json()["data"] == created


def test_a_key_without_the_permission_is_refused(stack: Stack) -> None:
    owner = api(stack, new_tenant(stack, "acme", MANAGE).key)
    webhook = f"{HOOKS}/{_register(owner)['id']}"
    reader = api(stack, new_tenant(stack, "acme").key)  # every contacts permission
    for response in (
        reader.get(HOOKS), reader.post(HOOKS, json={"url": URL, "events": ["contact.updated"]}),
        reader.get(webhook), reader.patch(webhook, json={}), reader.delete(webhook),
        reader.post(f"{webhook}/rotate-secret"), reader.get(f"{webhook}/deliveries"),
        reader.post(f"{webhook}/replay", json={"since": "2024-01-15T10:30:00Z"}),
    ):
        assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
    assert_error(api(stack).get(HOOKS), 401, "MISSING_API_KEY")
    assert len(owner.get(HOOKS).json()["data"]["webhooks"]) == 1


UNSAFE = [
    "https://127.0.0.1/hook", "https://[::1]/hook", "https://10.0.0.8/hook",
    "https://172.16.3.4/hook", "https://192.168.0.10/hook", "https://169.254.169.254/latest",
    "https://[::ffff:127.0.0.1]/hook", "https://localhost/hook", "http://93.184.216.34/hook",
    "https://user:password@93.184.216.34/hook",
]


@pytest.mark.parametrize("url", UNSAFE)
def test_unsafe_urls_are_refused(stack: Stack, url: str) -> None:
    client = api(stack, new_tenant(stack, "acme", MANAGE).key)
    reason = assert_bad_fields(client.post(HOOKS, json={"url": url, "events":
                                                         ["contact.updated"]}), "url")["url"]
    assert "https://" in reason or "address" in reason or "password" in reason, reason
    webhook = f"{HOOKS}/{_register(client)['id']}"
    assert_bad_fields(client.patch(webhook, json={"url": url}), "url")
    assert client.get(webhook).json()["data"]["url"] == URL
    assert len(client.get(HOOKS).json()["data"]["webhooks"]) == 1


def test_bodies_are_validated(stack: Stack) -> None:
    client = api(stack, new_tenant(stack, "acme", MANAGE).key)
    for body, field in [
        ({"url": URL}, "events"), ({"events": ["contact.updated"]}, "url"),
        ({"url": URL, "events": []}, "events"), ({"url": URL, "events": ["contact.merged"]},
                                                 "events"),
        ({"url": URL, "events": ["contact.updated"], "secret": "x"}, "secret"),
        ({"url": URL, "events": ["contact.updated"], "description": None}, "description"),
        ({"url": "ftp://x", "events": ["contact.updated"]}, "url"),
    ]:
        assert_bad_fields(client.post(HOOKS, json=body), field)
    webhook = f"{HOOKS}/{_register(client)['id']}"
    assert_bad_fields(client.patch(webhook, json={"enabled": "yes"}), "enabled")
    assert_bad_fields(client.patch(webhook, json={"url": None}), "url")
    assert_error(client.get(f"{HOOKS}/not-an-id"), 404, "NOT_FOUND")


def test_insecure_urls_when_allowed(stack: Stack, tmp_path: Path) -> None:
    key = new_tenant(stack, "acme", MANAGE).key
    with extra_gateway(stack, tmp_path, CONTACTSYNC_WEBHOOKS_ALLOW_INSECURE="true") as gateway:
        client = httpx.Client(base_url=gateway.base_url, headers={"X-API-Key": key}, timeout=15)
        with client:
            for url in ("http://127.0.0.1:9000/hook", "http://localhost:9000/hook"):
                response = client.post(HOOKS, json={"url": url, "events": ["contact.updated"]})
                assert response.status_code == 201, response.text
            # Still no credentials in a URL, and http or https only.
            for url in ("http://user:pw@127.0.0.1/hook", "ftp://127.0.0.1/hook"):
                response = client.post(HOOKS, json={"url": url, "events": ["contact.updated"]})
                assert_bad_fields(response, "url")
