"""Park updates that ended `failed`: record them and keep them as dead letters to replay.

The one place that parks: the rule's refusals in the transaction that recorded them, every
other failure (unreadable, failed to apply, out of retries) in a transaction of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from contactsync import names
from contactsync.batch_apply import Outcome, record_failures
from contactsync.dead_letters import park
from contactsync.timeutil import utcnow
from contactsync.updates import AcceptedUpdate
from tasks.retry import is_transient
from tasks.runtime import Runtime
from tasks.validation import storable

log = logging.getLogger("contactsync.worker")

Failure = tuple[AcceptedUpdate, dict[str, str]]


def park_refused(session: Session, outcomes: Sequence[Outcome], now: datetime) -> None:
    """Park the updates the rule refused (too many custom fields), already recorded `failed`
    in `session`, so that `dead-letters replay` can queue them again once the contact has room.
    """
    # In the transaction that recorded them, not after: the task drops a finished update's
    # body once it commits, and a refusal committed without its dead letter could never be
    # replayed.
    refused = [(o.update, o.error) for o in outcomes if o.status == "failed" and o.error]
    if refused:
        park(session, refused, now)


def park_failures(runtime: Runtime, failures: list[Failure]) -> tuple[list[Failure], list[str]]:
    """Record `failed` and park as dead letters; return those parked and the ids to retry.

    While the database is down, those are retried. A failure whose own values the database
    refuses (a contact id too long for its column, a sequence past BIGINT) must not take the
    others, or the task, down with it, nor come back forever: it is parked alone, its columns
    made to fit.
    """
    again: list[str] = []
    try:
        _park(runtime, failures)
        return failures, again
    except Exception as exc:
        if is_transient(exc):
            return [], [u.update_id for u, _ in failures]
        if len(failures) == 1:
            return _park_storable(runtime, failures[0], exc, again), again
    parked: list[Failure] = []
    for failure in failures:
        try:
            _park(runtime, [failure])
            parked.append(failure)
        except Exception as exc:
            if is_transient(exc):
                again.append(failure[0].update_id)
            else:
                parked += _park_storable(runtime, failure, exc, again)
    return parked, again


def _park(
    runtime: Runtime, failures: list[Failure], bodies: dict[str, dict[str, Any]] | None = None,
) -> None:
    with runtime.db.unit_of_work() as session:
        now = utcnow()
        park(session, record_failures(session, failures, now), now, bodies)


def _park_storable(
    runtime: Runtime, failure: Failure, refused: BaseException, again: list[str]
) -> list[Failure]:
    """Park one failure whose values the database refused, as `storable` makes them; the dead
    letter keeps the body as it came. Return it as parked, or nothing when even that fails
    (its id added to `again` when the failure was transient)."""
    update, error = failure
    log.warning("update %s failed and could not be recorded as it is (%s); recording it with "
                "its columns made to fit", update.update_id, describe(refused))
    fitted = storable(update)
    try:
        _park(runtime, [(fitted, error)], {update.update_id: asdict(update)})
        return [(update, error)]
    except Exception as exc:
        if is_transient(exc):
            again.append(update.update_id)
            return []
        # Not expected once the columns fit. Never queued again: out of the pending set, its
        # body left in Redis for an operator.
        log.error("update %s failed and could not be recorded (%s); its body stays in Redis",
                  update.update_id, describe(exc))
        runtime.redis.zrem(names.PENDING_KEY, update.update_id)
        return []


def describe(exc: BaseException) -> str:
    """Name a failure for the log without its text: SQL errors quote the statement's values."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return type(exc).__name__
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    return f"{type(exc).__name__} ({type(orig).__name__}, {sqlstate})"
