"""Webhook delivery end to end: updates through the gateway, the worker's relay fans events out
and dispatches them, two delivery workers send them to a real receiver process.

Signatures are verified with `standardwebhooks`, the specification's reference library."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from standardwebhooks import Webhook

from contactsync import webhook_endpoints as store
from contactsync.db import Database
from contactsync.models import WebhookDelivery, WebhookEndpoint
from contactsync.timeutil import utcnow
from tests.conftest import Stack, make_contact, make_tenant
from tests.support import Process, free_port, wait_until
from tests.webhook_support import (
    Receiver,
    attempts,
    deliveries,
    make_endpoint,
    start_delivery_workers,
)

pytestmark = pytest.mark.slow  # a receiver and delivery workers of its own

METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    got = Receiver(tmp_path_factory.mktemp("receiver"))
    yield got
    got.stop()


@pytest.fixture(scope="module")
def delivery_workers(
    running_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Process]]:
    """Two delivery workers (two pool processes each) on the webhooks queue."""
    workers = start_delivery_workers(
        running_stack.settings, tmp_path_factory.mktemp("webhook-workers"), "webhooks", 2,
        allow_insecure=True,
        # The first serves its metrics (test_metrics_count_deliveries_and_show_the_backlog).
        each=[{"CONTACTSYNC_WORKER_METRICS_PORT": str(METRICS_PORT)}, {}],
    )
    yield workers
    for worker in workers:
        worker.stop()


@pytest.fixture
def hooks(stack: Stack, delivery_workers: list[Process]) -> Iterator[Stack]:
    """The stack with delivery workers; every endpoint is switched off after the test, so that
    nothing is still being retried when the next one starts."""
    yield stack
    with stack.db.unit_of_work() as session:
        session.execute(update(WebhookEndpoint).values(enabled=False))
    wait_until(lambda: not _in_flight(stack.db), timeout=30)


def _in_flight(db: Database) -> bool:
    with db.reading() as session:
        return session.scalar(select(WebhookDelivery.id).where(
            WebhookDelivery.claimed_until > utcnow(), WebhookDelivery.status == "pending"
        ).limit(1)) is not None


def put(stack: Stack, key: str, contact_id: str, body: dict[str, Any]) -> str:
    with stack.client(key) as client:
        response = client.put(f"/external/v1/contacts/{contact_id}", json=body,
                              headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        return str(response.json()["data"]["update_id"])


def verified(request: dict[str, Any], secret: str) -> dict[str, Any]:
    """Return the event a request carried, verified by the reference library."""
    event: dict[str, Any] = Webhook(secret).verify(request["body"].encode(), request["headers"])
    assert request["headers"]["webhook-id"] == event["id"]
    return event


def test_signed_events_arrive_in_order_per_contact_and_only_to_their_account(
    hooks: Stack, receiver: Receiver
) -> None:
    acme, other = make_tenant(hooks.db, "acme"), make_tenant(hooks.db, "other")
    path, other_path = f"/hook/order-{time.time_ns()}", f"/hook/other-{time.time_ns()}"
    _, secret = make_endpoint(hooks.db, hooks.settings, acme.account_id, receiver.url(path))
    make_endpoint(hooks.db, hooks.settings, other.account_id, receiver.url(other_path))
    contacts = [make_contact(hooks.db, acme.account_id, email=f"c{i}@example.com")
                for i in range(4)]
    sent: dict[str, list[str]] = {c: [] for c in contacts}
    for n in range(5):
        for contact_id in contacts:
            sent[contact_id].append(put(hooks, acme.key, contact_id, {"position": f"P{n}"}))
    wait_until(lambda: len(receiver.requests(path)) >= 20, timeout=30)
    events = [verified(r, secret) for r in receiver.requests(path)]
    assert {e["type"] for e in events} == {"contact.updated"}
    for contact_id in contacts:
        mine = [e for e in events if e["contact_id"] == contact_id]
        assert [e["update_id"] for e in mine] == sent[contact_id]  # each once, in order
        assert [e["sequence"] for e in mine] == sorted(e["sequence"] for e in mine)
    assert receiver.requests(other_path) == []  # another account's endpoint gets nothing
    headers = receiver.requests(path)[0]["headers"]
    assert headers["content-type"] == "application/json"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60


def test_retries_after_5xx_and_timeouts_keep_the_contact_order(
    hooks: Stack, receiver: Receiver
) -> None:
    tenant = make_tenant(hooks.db, "acme")
    for how in ("503", "sleep"):
        path = f"/fail/2/{how}/{time.time_ns()}"
        endpoint_id, secret = make_endpoint(
            hooks.db, hooks.settings, tenant.account_id, receiver.url(path)
        )
        contact_id = make_contact(hooks.db, tenant.account_id, email=f"{how}@example.com")
        first = put(hooks, tenant.key, contact_id, {"position": "first"})
        second = put(hooks, tenant.key, contact_id, {"position": "second"})

        def done(endpoint_id: str = endpoint_id) -> bool:
            return [d.status for d in deliveries(hooks.db, endpoint_id)] == ["succeeded"] * 2

        wait_until(done, timeout=45)
        got = [verified(r, secret) for r in receiver.requests(path)]
        # The first event twice refused, then taken; the second only after it.
        assert [e["update_id"] for e in got] == [first, first, first, second]
        tries = attempts(hooks.db, endpoint_id)
        assert [a.status_code for a in tries][3:] == [204]
        if how == "503":
            assert [a.status_code for a in tries][:2] == [503, 503]
            assert tries[0].error == "answered HTTP 503"
        else:
            assert [a.status_code for a in tries][:2] == [None, None]
            assert tries[0].error == "no answer within 1 s"
        record = deliveries(hooks.db, endpoint_id)[0]
        assert record.attempts == 3
        gaps = [(b.attempted_at - a.attempted_at).total_seconds()
                for a, b in itertools.pairwise(tries[:3])]
        assert all(gap < 5 for gap in gaps)  # the first retries come within seconds


def test_a_slow_endpoint_does_not_delay_another(hooks: Stack, receiver: Receiver) -> None:
    slow_tenant, fast_tenant = make_tenant(hooks.db, "slow"), make_tenant(hooks.db, "fast")
    slow_path, fast_path = f"/sleep/5/{time.time_ns()}", f"/hook/fast-{time.time_ns()}"
    make_endpoint(hooks.db, hooks.settings, slow_tenant.account_id, receiver.url(slow_path))
    make_endpoint(hooks.db, hooks.settings, fast_tenant.account_id, receiver.url(fast_path))
    slow_contacts = [make_contact(hooks.db, slow_tenant.account_id, email=f"s{i}@example.com")
                     for i in range(20)]
    fast_contact = make_contact(hooks.db, fast_tenant.account_id, email="f@example.com")
    for contact_id in slow_contacts:
        put(hooks, slow_tenant.key, contact_id, {"position": "slow"})
    wait_until(lambda: len(receiver.requests(slow_path)) >= 1, timeout=30)
    started = time.time()
    for n in range(5):
        put(hooks, fast_tenant.key, fast_contact, {"position": f"fast {n}"})
    wait_until(lambda: len(receiver.requests(fast_path)) >= 5, timeout=30)
    # Each of the slow endpoint's attempts takes the whole timeout (1 s) and is retried; the
    # other endpoint's five events, one after another, are not held up by them.
    took = max(r["received"] for r in receiver.requests(fast_path)) - started
    assert took < 4, took


def test_replay_sends_the_events_again(hooks: Stack, receiver: Receiver) -> None:
    tenant = make_tenant(hooks.db, "acme")
    path = f"/hook/replay-{time.time_ns()}"
    endpoint_id, secret = make_endpoint(
        hooks.db, hooks.settings, tenant.account_id, receiver.url(path)
    )
    contact_id = make_contact(hooks.db, tenant.account_id)
    update_ids = [put(hooks, tenant.key, contact_id, {"position": f"P{n}"}) for n in range(3)]
    wait_until(lambda: len(receiver.requests(path)) >= 3, timeout=30)
    replay(hooks.db, endpoint_id)
    wait_until(lambda: len(receiver.requests(path)) >= 6, timeout=30)
    got = [verified(r, secret)["update_id"] for r in receiver.requests(path)]
    assert got == update_ids + update_ids
    assert [r["headers"]["webhook-id"] for r in receiver.requests(path)][3:] == [
        r["headers"]["webhook-id"] for r in receiver.requests(path)][:3]


def replay(db: Database, endpoint_id: str) -> None:
    """Replay every kept event of the endpoint, through the store as the API does."""
    with db.unit_of_work() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        assert store.replay(session, endpoint, utcnow() - timedelta(hours=1), utcnow()) == 3



def test_metrics_count_deliveries_and_show_the_backlog(hooks: Stack, receiver: Receiver) -> None:
    tenant = make_tenant(hooks.db, "acme")
    path = f"/hook/metrics-{time.time_ns()}"
    endpoint_id, _ = make_endpoint(hooks.db, hooks.settings, tenant.account_id, receiver.url(path))
    stuck_id, _ = make_endpoint(hooks.db, hooks.settings, tenant.account_id,
                                receiver.url(f"/status/500/{time.time_ns()}"))
    contact_id = make_contact(hooks.db, tenant.account_id)
    put(hooks, tenant.key, contact_id, {"position": "VP"})
    wait_until(lambda: receiver.requests(path), timeout=30)
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"

    def scraped() -> str | None:
        text = httpx.get(url, timeout=5).text
        wanted = (f'contactsync_webhook_oldest_undelivered_seconds{{endpoint_id="{stuck_id}"}}',
                  'contactsync_webhook_deliveries_total{outcome="retried"}',
                  "contactsync_webhook_endpoints_disabled")
        return text if all(w in text for w in wanted) else None

    text = wait_until(scraped, timeout=30)
    assert f'endpoint_id="{endpoint_id}"' not in text  # delivered: no backlog
    assert "contactsync_webhook_delivery_latency_seconds_bucket" in text
    assert "whsec_" not in text
