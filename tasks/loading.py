"""Read the bodies the gateway stored for a task's updates, and check them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from contactsync import names
from contactsync.updates import AcceptedUpdate
from tasks.runtime import Runtime
from tasks.validation import BadMessage, RefusedPatch, parse_stored_update

log = logging.getLogger("contactsync.worker")


def load_updates(
    runtime: Runtime, update_ids: Sequence[str]
) -> tuple[list[AcceptedUpdate], list[tuple[AcceptedUpdate, dict[str, str]]], list[str]]:
    """Read the bodies the gateway stored; return those to apply, those to park at once, and
    the ids with no body.

    A missing body was finished by an earlier delivery, or lost (tasks/lost_bodies.py). A body
    whose patch or contact id this worker refuses is parked as `failed` with the reason; one
    that does not even say which update it is can only be logged.
    """
    # An id listed twice is one update: applied one by one, it would fail (or be parked) twice.
    update_ids = list(dict.fromkeys(update_ids))
    raws = runtime.redis.mget([names.update_body_key(i) for i in update_ids])
    missing = [i for i, raw in zip(update_ids, raws, strict=True) if raw is None]
    if missing:
        log.info("skipping updates with no stored body: %s", ", ".join(missing))
    updates = []
    refused: list[tuple[AcceptedUpdate, dict[str, str]]] = []
    unreadable = []
    for update_id, raw in zip(update_ids, raws, strict=True):
        if raw is None:
            continue
        try:
            updates.append(parse_stored_update(raw))  # bad bodies: tasks/validation.py
        except RefusedPatch as exc:
            log.error("refusing update %s: %s", update_id, exc)
            refused.append((exc.update, {"code": "UNREADABLE_UPDATE", "message": str(exc)}))
        except (ValueError, TypeError) as exc:
            # One unreadable body (say, from a newer gateway) must not hold back the others;
            # it stays in Redis for an operator to look at.
            reason = str(exc) if isinstance(exc, BadMessage) else type(exc).__name__
            log.error("skipping update %s: unreadable body (%s)", update_id, reason)
            unreadable.append(update_id)
    if unreadable:  # no longer pending: queueing it again would only log this again
        runtime.redis.zrem(names.PENDING_KEY, *unreadable)
    return updates, refused, missing
