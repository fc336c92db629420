"""The delivery task: send what a dispatcher claimed for one endpoint, record each attempt.

No Celery retry: a failed delivery gets its next attempt time in the database and the
dispatcher hands it out again when due (a countdown of an hour would outlive the broker's
visibility timeout and come back early). A task that fails outright (the database down)
leaves its claim to lapse; the deliveries are handed out again after the lease.
"""

from __future__ import annotations

import time
from datetime import timedelta

from celery import Task

from contactsync import names
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.webhook_claims import Batch, Claim, Outgoing, claim_more, give_back, load_claimed
from contactsync.webhook_endpoints import announce_change
from contactsync.webhook_outcomes import Recorded, Result, record_results
from contactsync.webhook_secrets import signing_secrets
from contactsync.webhook_signing import Signer
from contactsync.webhook_urls import UnsafeWebhookUrl, check_url
from tasks.retry import backoff_seconds
from tasks.runtime import Runtime, get_runtime
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
    while delivery_ids:
        with runtime.db.reading() as session:
            batch = load_claimed(session, endpoint_id, delivery_ids, token)
            if batch is not None:
                session.expunge(batch.endpoint)
        if batch is None:  # delivered, claimed again after the lease, or the endpoint is off
            # Off: what the claim holds is given back, not left looking in flight until the
            # lease ends (a test that waited for it after disabling the endpoint timed out).
            with runtime.db.unit_of_work() as session:
                give_back(session, delivery_ids, token)
            break
        recorded = _deliver(runtime, batch, token)
        for outcome, results in (("succeeded", recorded.succeeded),
                                 ("retried", recorded.retried), ("failed", recorded.failed)):
            counts[outcome] += len(results)
        if recorded.disabled_reason is not None or time.monotonic() >= budget_ends:
            break
        with runtime.db.unit_of_work() as session:
            delivery_ids = claim_more(session, settings, endpoint_id, token, utcnow())
    return counts


def _deliver(runtime: Runtime, batch: Batch, token: str) -> Recorded:
    """Send one batch and record its attempts."""
    settings = runtime.settings
    sent, unsent = _send(batch, settings)
    now = utcnow()
    results = [Result(
        s.delivery.delivery_id, s.delivery.event_id, s.attempted_at, s.duration_ms,
        s.status_code, s.error,
        retry_at=now + timedelta(seconds=backoff_seconds(
            s.delivery.attempts, settings.webhook_retry_max_seconds,
            base=settings.webhook_retry_base_seconds,
        )),
    ) for s in sent]
    with runtime.db.unit_of_work() as session:
        recorded = record_results(session, batch.endpoint.id, token, results, settings, now)
        give_back(session, [d.delivery_id for d in unsent], token)
    if recorded.disabled_reason is not None:  # the relays stop fanning events out to it
        announce_change(runtime.redis)
    metrics.record_deliveries(
        recorded, {d.delivery_id: d.occurred_at for d in batch.deliveries}, now
    )
    return recorded


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

