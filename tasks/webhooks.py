"""The delivery task: send what a dispatcher claimed for one endpoint, record each attempt.

No Celery retry: a failed delivery gets its next attempt time in the database and the
dispatcher hands it out again when due (a countdown of an hour would outlive the broker's
visibility timeout and come back early). A task that fails outright (the database down)
leaves its claim to lapse; the deliveries are handed out again after the lease.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from celery import Task
from sqlalchemy.orm import Session

from contactsync import names
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.webhook_claims import Batch, Claim, Outgoing, claim_more, give_back, load_claimed
from contactsync.webhook_endpoints import announce_change
from contactsync.webhook_outcomes import Result, record_results
from contactsync.webhook_secrets import signing_secrets
from contactsync.webhook_signing import Signer
from contactsync.webhook_urls import UnsafeWebhookUrl, check_url
from tasks.retry import backoff_seconds
from tasks.runtime import get_runtime
from tasks.webhook_sender import Sent, get_sender
from worker import metrics
from worker.app import app


@app.task(  # type: ignore[untyped-decorator]
    name=names.DELIVER_WEBHOOKS_TASK, bind=True, acks_late=True, reject_on_worker_lost=True
)
def deliver_webhooks(
    self: Task, endpoint_id: str, delivery_ids: list[int], token: str
) -> dict[str, int]:
    """Send the claimed deliveries of one endpoint; return counts by outcome (ids only)."""
    runtime = get_runtime()
    settings = runtime.settings
    # Then the endpoint's next due heads, while the time budget lasts: no wait for the next
    # dispatcher pass, no task message per batch, and still one task of the endpoint.
    budget_ends = time.monotonic() + settings.webhook_task_budget_seconds
    counts = {"succeeded": 0, "retried": 0, "failed": 0}
    with runtime.db.unit_of_work() as session:
        batch = _load(session, endpoint_id, delivery_ids, token)
    # None: delivered, claimed again after the lease, or the endpoint is off.
    while batch is not None:
        sent, unsent = _send(batch, settings)
        now = utcnow()
        # One transaction a batch: its attempts recorded, what it did not start given back,
        # and the endpoint's next heads claimed and read; three transactions, each with its
        # BEGIN, COMMIT and round trips, did the same before.
        with runtime.db.unit_of_work() as session:
            recorded = record_results(session, batch.endpoint.id, token,
                                      _results(sent, settings, now), settings, now)
            give_back(session, [d.delivery_id for d in unsent], token)
            batch = None
            if recorded.disabled_reason is None and time.monotonic() < budget_ends:
                more = claim_more(session, settings, endpoint_id, token, now)
                batch = _load(session, endpoint_id, more, token) if more else None
        if recorded.disabled_reason is not None:  # the relays stop fanning events out to it
            announce_change(runtime.redis)
        metrics.record_deliveries(
            recorded, {s.delivery.delivery_id: s.delivery.occurred_at for s in sent}, now
        )
        for outcome, results in (("succeeded", recorded.succeeded),
                                 ("retried", recorded.retried), ("failed", recorded.failed)):
            counts[outcome] += len(results)
    return counts


def _load(session: Session, endpoint_id: str, delivery_ids: list[int],
          token: str) -> Batch | None:
    batch = load_claimed(session, endpoint_id, delivery_ids, token)
    if batch is None:
        # The endpoint off: what the claim holds is given back, not left looking in flight
        # until the lease ends (a test that waited for it after disabling the endpoint
        # timed out).
        give_back(session, delivery_ids, token)
    else:
        # Read after its session, to sign and to check; what record_results changed of it
        # in this transaction written first, or leaving the session would drop it.
        session.flush()
        session.expunge(batch.endpoint)
    return batch


def _results(sent: list[Sent], settings: Settings, now: datetime) -> list[Result]:
    return [Result(
        s.delivery.delivery_id, s.delivery.event_id, s.attempted_at, s.duration_ms,
        s.status_code, s.error,
        retry_at=now + timedelta(seconds=backoff_seconds(
            s.delivery.attempts, settings.webhook_retry_max_seconds,
            base=settings.webhook_retry_base_seconds,
        )),
    ) for s in sent]


def _send(batch: Batch, settings: Settings) -> tuple[list[Sent], list[Outgoing]]:
    endpoint = batch.endpoint
    now = utcnow()
    try:
        # Again at each delivery, not only at registration: what a name resolves to changes.
        check_url(endpoint.url, allow_insecure=settings.webhooks_allow_insecure)
    except UnsafeWebhookUrl as exc:
        error = f"refused, not sent: {exc.reason}"
        return [Sent(d, now, 0, None, error) for d in batch.deliveries], []
    signer = Signer(signing_secrets(endpoint, now, settings))
    return get_sender(settings).send(endpoint.url, signer, batch.deliveries)


def argsrepr(claim: Claim) -> str:
    """Return what Flower shows of a delivery task: the endpoint, the events' ids (the first
    ten) and the attempt (the highest of the batch): ids only, never the claim's token."""
    shown = ", ".join(claim.event_ids[:10])
    more = f", +{len(claim.event_ids) - 10} more" if len(claim.event_ids) > 10 else ""
    return (f"[{claim.endpoint_id}, {len(claim.event_ids)} events: {shown}{more}, "
            f"attempt {claim.attempt}]")

