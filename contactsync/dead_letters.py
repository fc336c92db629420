"""Dead letters: updates that ended `failed`, kept whole, listed and replayed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from contactsync.models import DeadLetter
from contactsync.queue.requeue import requeue
from contactsync.timeutil import utcnow
from contactsync.updates import AcceptedUpdate


def park(
    session: Session, failures: Sequence[tuple[AcceptedUpdate, Mapping[str, Any]]], now: datetime,
    bodies: Mapping[str, dict[str, Any]] | None = None,
) -> None:
    """Keep failed updates, in the caller's transaction, until someone replays them.

    `bodies` keeps an update's body as it came where its columns hold values made to fit.
    """
    for update, error in failures:
        # Lock and re-read the letter: a replay of it may be committing right now, and parking
        # again must win over its `replayed_at`, never be silently overwritten by it.
        letter = session.get(
            DeadLetter, update.update_id, with_for_update=True, populate_existing=True
        )
        if letter is None:
            letter = DeadLetter(update_id=update.update_id)
            session.add(letter)
        letter.account_id = update.account_id
        letter.contact_id = update.contact_id
        letter.queue = update.queue
        letter.body = (bodies or {}).get(update.update_id) or asdict(update)
        letter.error = dict(error)
        letter.failed_at = now
        letter.replayed_at = None


def pending(session: Session) -> list[DeadLetter]:
    """Return the dead letters not replayed yet, oldest first."""
    query = select(DeadLetter).where(DeadLetter.replayed_at.is_(None))
    return list(session.scalars(query.order_by(DeadLetter.failed_at)))


def replay(session: Session, redis: Redis, update_ids: Sequence[str], origin: str) -> list[str]:
    """Queue dead letters again with their original sequence; return the ids queued."""
    query = select(DeadLetter).where(DeadLetter.replayed_at.is_(None))
    if update_ids:
        query = query.where(DeadLetter.update_id.in_(list(update_ids)))
    # Locked, so that two replays at once cannot both queue the same letter.
    letters = list(session.scalars(query.order_by(DeadLetter.failed_at).with_for_update()))
    if not letters:
        return []
    now = utcnow()
    for letter in letters:
        letter.replayed_at = now
    # Write `replayed_at` before queueing: once queued, a worker may fail the update again and
    # park it, and that must land after this mark (it waits for the row), not under it.
    session.flush()
    updates = [AcceptedUpdate(**{**d.body, "reply_to": None}) for d in letters]
    requeue(redis, updates, origin, store_bodies=True)  # one message each, as they failed
    return [u.update_id for u in updates]
