"""Webhook deliveries that cannot succeed: refused at delivery time (no SSRF), retried until
they finally fail, and the endpoint disabled. A delivery worker with insecure URLs not
allowed, and retry and disable durations of seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import update

from contactsync.models import WebhookEndpoint
from tests.conftest import Stack, make_contact, make_tenant
from tests.e2e.test_webhooks import put
from tests.integration.apply_support import outbox_count
from tests.support import Process, wait_until
from tests.webhook_support import (
    Receiver,
    attempts,
    deliveries,
    endpoint,
    make_endpoint,
    start_delivery_workers,
)

pytestmark = pytest.mark.slow  # a receiver and delivery workers of its own

@pytest.fixture(scope="module")
def strict_worker(
    running_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    [worker] = start_delivery_workers(
        running_stack.settings, tmp_path_factory.mktemp("strict-webhook-worker"),
        "webhooks-strict", allow_insecure=False, retry_for_seconds=2, disable_after_seconds=1,
    )
    yield worker
    worker.stop()


@pytest.fixture
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    got = Receiver(tmp_path_factory.mktemp("receiver"))
    yield got
    got.stop()


@pytest.fixture
def strict(stack: Stack, strict_worker: Process) -> Iterator[Stack]:
    yield stack
    with stack.db.unit_of_work() as session:
        session.execute(update(WebhookEndpoint).values(enabled=False))


def test_private_addresses_are_refused_at_delivery_time_and_never_sent(
    strict: Stack, receiver: Receiver
) -> None:
    tenant = make_tenant(strict.db, "acme")
    port = receiver.port
    urls = [
        f"https://127.0.0.1:{port}/a", f"https://[::1]:{port}/b", "https://10.20.30.40/c",
        "https://169.254.169.254/latest/meta-data", f"https://localhost:{port}/d",
        f"http://127.0.0.1:{port}/plain-http",
    ]
    # As if each was registered while it resolved elsewhere (or with insecure URLs allowed).
    endpoint_ids = [make_endpoint(strict.db, strict.settings, tenant.account_id, url)[0]
                    for url in urls]
    contact_id = make_contact(strict.db, tenant.account_id)
    put(strict, tenant.key, contact_id, {"position": "VP"})

    def refused(endpoint_id: str) -> bool:
        tried = attempts(strict.db, endpoint_id)
        return bool(tried) and all(a.error and a.error.startswith("refused, not sent:")
                                   for a in tried)

    for endpoint_id in endpoint_ids:
        wait_until(lambda e=endpoint_id: refused(e), timeout=30)
    reasons = {attempts(strict.db, e)[0].error for e in endpoint_ids}
    assert "refused, not sent: the URL must start with https://" in reasons
    assert any("localhost resolves to" in (r or "") for r in reasons)
    assert all(a.status_code is None for e in endpoint_ids for a in attempts(strict.db, e))
    assert receiver.requests() == []  # nothing reached the loopback receiver


def test_a_delivery_out_of_retries_fails_and_a_failing_endpoint_is_disabled(
    strict: Stack, strict_worker: Process, receiver: Receiver
) -> None:
    tenant = make_tenant(strict.db, "acme")
    endpoint_id, _ = make_endpoint(
        strict.db, strict.settings, tenant.account_id, f"https://127.0.0.1:{receiver.port}/x"
    )
    contact_id = make_contact(strict.db, tenant.account_id)
    put(strict, tenant.key, contact_id, {"position": "first"})
    wait_until(lambda: [d.status for d in deliveries(strict.db, endpoint_id)] == ["failed"],
               timeout=30)
    first = deliveries(strict.db, endpoint_id)[0]
    assert first.attempts >= 3 and first.finished_at is not None
    assert endpoint(strict.db, endpoint_id).failing_since is not None
    assert endpoint(strict.db, endpoint_id).enabled
    # The next event fails on; a second after the first final failure, the endpoint is off.
    started = time.monotonic()
    put(strict, tenant.key, contact_id, {"position": "second"})
    wait_until(lambda: not endpoint(strict.db, endpoint_id).enabled, timeout=30)
    assert time.monotonic() - started < 20
    disabled = endpoint(strict.db, endpoint_id)
    assert disabled.disabled_at is not None
    assert disabled.disabled_reason and "every delivery failed since" in disabled.disabled_reason
    assert [d.status for d in deliveries(strict.db, endpoint_id)] == ["failed", "failed"]
    wait_until(lambda: "webhook.endpoint.disabled" in strict_worker.log(), timeout=10)
    # A disabled endpoint gets no new deliveries.
    put(strict, tenant.key, contact_id, {"position": "third"})
    wait_until(lambda: outbox_count(strict.db) == 0 and any(
        e["contact"]["position"] == "third" for e in strict.events()), timeout=20)
    assert len(deliveries(strict.db, endpoint_id)) == 2
