"""After commit: answer waiting gateways, drop finished bodies and pending entries, count."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from contactsync import names
from contactsync.batch_apply import Outcome
from contactsync.timeutil import isoformat, utcnow
from tasks.runtime import Runtime
from worker import metrics as worker_metrics

log = logging.getLogger("contactsync.worker")


def finish(runtime: Runtime, outcomes: list[Outcome]) -> None:
    """After commit: answer waiting gateways, then drop the bodies of finished updates."""
    replies: dict[str, list[dict[str, Any]]] = {}
    for outcome in outcomes:
        if outcome.update.reply_to:
            replies.setdefault(outcome.update.reply_to, []).append(reply_of(outcome))
    finished = [o.update.update_id for o in outcomes]
    try:
        with runtime.redis.pipeline(transaction=False) as pipe:
            for channel, items in replies.items():
                pipe.publish(channel, orjson.dumps(items))
            if finished:
                pipe.delete(*[names.update_body_key(i) for i in finished])
                pipe.zrem(names.PENDING_KEY, *finished)
            for account_id, ids in _by_account(outcomes).items():
                pipe.zrem(names.account_pending_key(account_id), *ids)
            pipe.execute()
    except Exception:
        # The updates are committed; a waiting gateway falls back to 202 and a leftover body
        # is skipped on redelivery, so losing this step loses nothing.
        log.warning("could not publish replies or drop bodies", exc_info=True)
    # Count each finished update and log one line for it (ids, status, durations).
    worker_metrics.record_finished(outcomes)


def _by_account(outcomes: list[Outcome]) -> dict[str, list[str]]:
    by_account: dict[str, list[str]] = {}
    for outcome in outcomes:
        by_account.setdefault(outcome.update.account_id, []).append(outcome.update.update_id)
    return by_account


def reply_of(outcome: Outcome) -> dict[str, Any]:
    """Return what a waiting gateway needs to answer the client."""
    update = outcome.update
    return {
        "update_id": update.update_id,
        "contact_id": update.contact_id,
        "status": outcome.status,
        "received_at": update.received_at,
        "applied_at": isoformat(utcnow()),
        "changed_fields": outcome.changed_fields,
        "error": outcome.error,
        "contact": outcome.contact,
    }
