"""A delivery worker killed (SIGKILL) with a batch in flight: another delivery worker sends
every event of the batch and after it, in order per contact, none lost (at least once: what
the dead worker had sent arrives again).

Whichever comes first brings the batch back: the dead worker's task message, queued again once
its heartbeat stopped (worker/liveness.py; it still holds the claim's token), or the end of
the claim's lease (another dispatcher claims the deliveries again). Which one depends on which
relay claimed: the delivery workers here lease for 11 s, the running stack's relay for 60 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import orjson
import pytest

from tests.conftest import Stack, make_contact, make_tenant
from tests.e2e.test_webhooks import put
from tests.support import wait_until
from tests.webhook_support import Receiver, deliveries, make_endpoint, start_delivery_workers

pytestmark = pytest.mark.slow  # a receiver and delivery workers of its own, a death to notice

# A held answer stays unanswered within the timeout until the worker is killed; the lease (at
# least the task budget plus twice the timeout) ends seconds after it.
SHORT_LEASE = {
    "CONTACTSYNC_WEBHOOK_TIMEOUT_SECONDS": "5",
    "CONTACTSYNC_WEBHOOK_TASK_BUDGET_SECONDS": "1",
    "CONTACTSYNC_WEBHOOK_LEASE_SECONDS": "11",
}


@pytest.fixture
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    got = Receiver(tmp_path_factory.mktemp("receiver"))
    yield got
    got.stop()


def test_a_killed_delivery_workers_batch_is_sent_by_another_in_order(
    stack: Stack, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("dying-webhook-worker")
    tenant = make_tenant(stack.db, "acme")
    path = f"/hold/{time.time_ns()}"
    endpoint_id, _ = make_endpoint(stack.db, stack.settings, tenant.account_id, receiver.url(path))
    contacts = [make_contact(stack.db, tenant.account_id, email=f"c{i}@example.com")
                for i in range(3)]
    [doomed] = start_delivery_workers(stack.settings, logs, "webhooks-doomed",
                                      allow_insecure=True, **SHORT_LEASE)
    try:
        sent = {c: [put(stack, tenant.key, c, {"position": f"P{n}"}) for n in range(4)]
                for c in contacts}
        # The receiver holds its answers: with both pool processes sending (a contact's head
        # each, at least), the worker is surely in the middle of a batch.
        wait_until(lambda: len(receiver.requests(path)) >= 2, timeout=30)
        os.killpg(doomed.popen.pid, signal.SIGKILL)
        doomed.popen.wait(10)
    finally:
        doomed.stop()
    held = {r["headers"]["webhook-id"] for r in receiver.requests(path)}
    receiver.release()
    claimed = [d for d in deliveries(stack.db, endpoint_id) if d.claim_token is not None]
    assert claimed and all(d.status == "pending" and d.attempts == 0 for d in claimed)
    [survivor] = start_delivery_workers(stack.settings, logs, "webhooks-survivor",
                                        allow_insecure=True, **SHORT_LEASE)
    try:
        total = sum(len(ids) for ids in sent.values())
        wait_until(lambda: [d.status for d in deliveries(stack.db, endpoint_id)]
                   == ["succeeded"] * total, timeout=60)
        assert "contactsync.deliver_webhooks" in survivor.log()
    finally:
        survivor.stop()
    requests = receiver.requests(path)
    ids = [r["headers"]["webhook-id"] for r in requests]
    # Its answers never reached the dead worker: each event it held was sent again.
    assert all(ids.count(webhook_id) >= 2 for webhook_id in held), (held, ids)
    events = [orjson.loads(r["body"]) for r in requests]
    for contact_id, update_ids in sent.items():
        order = [update_ids.index(e["update_id"]) for e in events
                 if e["contact_id"] == contact_id]
        # Every event arrived, and none before an earlier one of its contact had (at least
        # once: a repeat of the last one sent may follow it).
        assert sorted(set(order)) == list(range(len(update_ids))), order
        assert order == sorted(order), order
