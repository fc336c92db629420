"""The endpoint store on both backends: tenancy, changes, rotation, attempts, replay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from contactsync.db import Database
from contactsync.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from contactsync.timeutil import as_utc, utcnow
from contactsync.webhook_claims import PARKED
from contactsync.webhook_endpoints import (
    EndpointChange,
    create_endpoint,
    delete_endpoint,
    get_endpoint,
    list_attempts,
    list_endpoints,
    replay,
    rotate_secret,
    update_endpoint,
)
from contactsync.webhook_secrets import signing_secrets, unseal
from contactsync.webhook_urls import UnsafeWebhookUrl
from tests.conftest import make_tenant

URL = "https://93.184.216.34/hook"


def _endpoint(db: Database, account_id: str, events: list[str] | None = None) -> str:
    with db.unit_of_work() as session:
        endpoint, _ = create_endpoint(
            session, db.settings, account_id, URL, events or ["contact.updated"], "", utcnow()
        )
        return endpoint.id


def test_create_keeps_the_secret_sealed_and_the_account_scoped(db: Database) -> None:
    a, b = make_tenant(db, "a"), make_tenant(db, "b")
    with db.unit_of_work() as session:
        endpoint, secret = create_endpoint(
            session, db.settings, a.account_id, URL,
            ["contact.deleted", "contact.updated", "contact.updated"], "crm", utcnow(),
        )
        endpoint_id = endpoint.id
    assert endpoint_id.startswith("whk_") and len(endpoint_id) == 24
    with db.reading() as session:
        stored = get_endpoint(session, a.account_id, endpoint_id)
        assert stored is not None
        assert stored.events == ["contact.deleted", "contact.updated"]
        assert secret not in stored.secret_ciphertext
        assert unseal(stored.secret_ciphertext, db.settings) == secret
        assert get_endpoint(session, b.account_id, endpoint_id) is None
        assert list_endpoints(session, b.account_id) == []
        assert [e.id for e in list_endpoints(session, a.account_id)] == [endpoint_id]
    with db.unit_of_work() as session:
        assert not delete_endpoint(session, b.account_id, endpoint_id)
        assert delete_endpoint(session, a.account_id, endpoint_id)
        assert not delete_endpoint(session, a.account_id, endpoint_id)


def test_unsafe_url_refused(db: Database) -> None:
    a = make_tenant(db, "a")
    endpoint_id = _endpoint(db, a.account_id)
    with db.unit_of_work() as session, pytest.raises(UnsafeWebhookUrl):
        create_endpoint(session, db.settings, a.account_id, "https://127.0.0.1/",
                        ["contact.updated"], "", utcnow())
    with db.unit_of_work() as session, pytest.raises(UnsafeWebhookUrl):
        endpoint = get_endpoint(session, a.account_id, endpoint_id)
        assert endpoint is not None
        update_endpoint(session, db.settings, endpoint, EndpointChange(url="http://10.0.0.1/"),
                        utcnow())
    with db.reading() as session:
        assert session.scalar(select(WebhookEndpoint.url)) == URL


def test_re_enabling_clears_the_failure_record(db: Database) -> None:
    a = make_tenant(db, "a")
    endpoint_id = _endpoint(db, a.account_id)
    now = utcnow()
    with db.unit_of_work() as session:
        endpoint = get_endpoint(session, a.account_id, endpoint_id)
        assert endpoint is not None
        endpoint.enabled, endpoint.disabled_reason = False, "failing for 3 days"
        endpoint.disabled_at = endpoint.failing_since = now
    with db.unit_of_work() as session:
        endpoint = get_endpoint(session, a.account_id, endpoint_id)
        assert endpoint is not None
        update_endpoint(session, db.settings, endpoint,
                        EndpointChange(enabled=True, events=["contact.created"]), now)
    with db.reading() as session:
        endpoint = get_endpoint(session, a.account_id, endpoint_id)
        assert endpoint is not None
        assert endpoint.enabled and endpoint.events == ["contact.created"]
        assert (endpoint.disabled_reason, endpoint.disabled_at, endpoint.failing_since) == (
            None, None, None)


def test_rotation_keeps_the_old_secret_signing_for_a_day(db: Database) -> None:
    a = make_tenant(db, "a")
    with db.unit_of_work() as session:
        endpoint, old = create_endpoint(session, db.settings, a.account_id, URL,
                                        ["contact.updated"], "", utcnow())
        endpoint_id = endpoint.id
    now = utcnow()
    with db.unit_of_work() as session:
        endpoint = get_endpoint(session, a.account_id, endpoint_id)
        assert endpoint is not None
        new = rotate_secret(session, db.settings, endpoint, now)
    with db.reading() as session:
        endpoint = get_endpoint(session, a.account_id, endpoint_id)
        assert endpoint is not None
        assert signing_secrets(endpoint, now, db.settings) == [new, old]
        later = now + timedelta(hours=24, seconds=1)
        assert signing_secrets(endpoint, later, db.settings) == [new]


def _event(account_id: str, n: int, type_: str, age: timedelta) -> WebhookEvent:
    return WebhookEvent(
        event_id=f"evt_{n:020d}", account_id=account_id, contact_id="cnt_aaaaaaaaaaaa",
        type=type_, sequence=n, occurred_at=utcnow() - age, payload="{}",
    )


def test_replay_makes_and_resets_deliveries(db: Database) -> None:
    a, b = make_tenant(db, "a"), make_tenant(db, "b")
    endpoint_id = _endpoint(db, a.account_id, ["contact.updated", "contact.deleted"])
    hour = timedelta(hours=1)
    with db.unit_of_work() as session:
        session.add_all([
            _event(a.account_id, 1, "contact.updated", 3 * hour),  # before `since`
            _event(a.account_id, 2, "contact.updated", hour),
            _event(a.account_id, 3, "contact.created", hour),  # not subscribed
            _event(a.account_id, 4, "contact.deleted", hour),
            _event(b.account_id, 5, "contact.updated", hour),  # another account's
        ])
        session.flush()
        failed = WebhookDelivery(
            endpoint_id=endpoint_id, event_id="evt_00000000000000000002",
            contact_id="cnt_aaaaaaaaaaaa", sequence=2, status="failed", attempts=9,
            next_attempt_at=utcnow() - hour, created_at=utcnow() - hour,
            finished_at=utcnow() - hour,
        )
        session.add(failed)
        session.flush()
        session.add(WebhookAttempt(
            delivery_id=failed.id, endpoint_id=endpoint_id, event_id=failed.event_id,
            attempted_at=utcnow() - hour, status_code=500, duration_ms=12, error="HTTP 500",
        ))
    now = utcnow()
    with db.unit_of_work() as session:
        endpoint = get_endpoint(session, a.account_id, endpoint_id)
        assert endpoint is not None
        assert replay(session, endpoint, now - 2 * hour, now) == 2
    with db.reading() as session:
        rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.sequence)).all()
        assert [(r.event_id[-1], r.status, r.attempts, r.finished_at) for r in rows] == [
            ("2", "pending", 0, None), ("4", "pending", 0, None)]
        # Due now, the contact's first; the later one parked behind it.
        assert [as_utc(r.next_attempt_at) for r in rows] == [now, PARKED]
        attempts, cursor = list_attempts(session, endpoint_id, limit=10)
        assert [(x.status_code, status) for x, status in attempts] == [(500, "pending")]
        assert cursor is None
    with db.unit_of_work() as session:  # once more: the same two rows, reset again
        endpoint = get_endpoint(session, a.account_id, endpoint_id)
        assert endpoint is not None
        assert replay(session, endpoint, now - 2 * hour, utcnow()) == 2
        assert len(session.scalars(select(WebhookDelivery)).all()) == 2


def test_attempts_page_newest_first(db: Database) -> None:
    a = make_tenant(db, "a")
    endpoint_id = _endpoint(db, a.account_id)
    with db.unit_of_work() as session:
        delivery = WebhookDelivery(
            endpoint_id=endpoint_id, event_id="evt_1", contact_id="cnt_aaaaaaaaaaaa", sequence=1,
            status="pending", attempts=5, next_attempt_at=utcnow(), created_at=utcnow(),
        )
        session.add(delivery)
        session.flush()
        session.add_all([
            WebhookAttempt(delivery_id=delivery.id, endpoint_id=endpoint_id, event_id="evt_1",
                           attempted_at=utcnow(), status_code=500 + n, duration_ms=n, error=None)
            for n in range(5)
        ])
    with db.reading() as session:
        first, cursor = list_attempts(session, endpoint_id, limit=3)
        assert [x.status_code for x, _ in first] == [504, 503, 502]
        second, end = list_attempts(session, endpoint_id, limit=3, before=cursor)
        assert [x.status_code for x, _ in second] == [501, 500]
        assert end is None
    with db.unit_of_work() as session:  # removing the endpoint removes its record
        assert delete_endpoint(session, None, endpoint_id)
    with db.reading() as session:
        assert session.scalars(select(WebhookAttempt)).all() == []
