"""The webhook dispatcher: each relay pass hands the due deliveries to delivery tasks.

It runs in the relay's loop (every worker has one), so events reach their task within a
relay interval of being published, and no extra process exists to watch. Any number of
dispatchers may run: claims keep each contact's head in flight once
(contactsync/webhook_claims.py). Now and then one of them prunes what retention no longer
keeps (contactsync/webhook_retention.py).
"""

from __future__ import annotations

import logging
import os

from redis import Redis

from contactsync import names
from contactsync.db import Database
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.webhook_claims import claim_due, release, unpark_stranded
from contactsync.webhook_retention import prune
from tasks.webhooks import argsrepr, deliver_webhooks

log = logging.getLogger("contactsync.webhooks")

PRUNE_EVERY_SECONDS = 300  # one relay prunes at most this often (a lock key that expires)


def dispatch_once(db: Database, redis: Redis, settings: Settings) -> int:
    """Claim the due deliveries and queue their tasks; return how many were handed out.

    Nothing while the webhooks queue is full: with no delivery worker running, claims would
    only lapse and be made again, and the queue would grow by a batch each lease.
    """
    if redis.llen(names.WEBHOOKS_QUEUE) >= settings.webhook_queue_max:
        return 0
    with db.unit_of_work() as session:
        claims = claim_due(session, settings, utcnow())
    for index, claim in enumerate(claims):
        try:
            deliver_webhooks.apply_async(
                args=[claim.endpoint_id, claim.delivery_ids, claim.token],
                queue=names.WEBHOOKS_QUEUE, argsrepr=argsrepr(claim), kwargsrepr="{}",
            )
        except Exception:
            # The broker is down: give back what was not queued, so that it goes out as soon
            # as a pass succeeds rather than after the lease.
            with db.unit_of_work() as session:
                for unsent in claims[index:]:
                    release(session, unsent)
            raise
    return sum(len(c.delivery_ids) for c in claims)


def prune_now_and_then(db: Database, redis: Redis, settings: Settings) -> None:
    """Prune old webhook events and deliveries, and make due any parked delivery nothing holds
    back (`unpark_stranded`), if no relay did in the last few minutes."""
    try:
        if not redis.set(names.WEBHOOK_PRUNE_LOCK_KEY, os.getpid(), nx=True,
                         ex=PRUNE_EVERY_SECONDS):
            return
        removed = prune(db, settings, utcnow())
        with db.unit_of_work() as session:
            unparked = unpark_stranded(session, utcnow())
    except Exception as exc:
        log.warning("webhook housekeeping (pruning, parked deliveries) failed (%s); will retry",
                    type(exc).__name__)
        return
    if removed:
        log.info("pruned %d webhook events and deliveries past their retention", removed)
    if unparked:
        log.warning("made due %d parked webhook deliveries that no earlier delivery held back",
                    unparked)
