"""Dead letters: updates that failed every retry, kept whole, listed and replayed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from contactsync import names
from contactsync.celery_message import queue_list_key
from contactsync.enqueue import task_message
from contactsync.models import DeadLetter
from contactsync.timeutil import utcnow
from contactsync.updates import AcceptedUpdate


def park(
    session: Session, failures: Sequence[tuple[AcceptedUpdate, dict[str, str]]], now: datetime
) -> None:
    """Keep failed updates, in the caller's transaction, until someone replays them."""
    for update, error in failures:
        session.merge(DeadLetter(
            update_id=update.update_id, account_id=update.account_id,
            contact_id=update.contact_id, queue=update.queue, body=asdict(update),
            error=error, failed_at=now, replayed_at=None,
        ))


def pending(session: Session) -> list[DeadLetter]:
    """Return the dead letters not replayed yet, oldest first."""
    query = select(DeadLetter).where(DeadLetter.replayed_at.is_(None))
    return list(session.scalars(query.order_by(DeadLetter.failed_at)))


def replay(session: Session, redis: Redis, update_ids: Sequence[str], origin: str) -> list[str]:
    """Queue dead letters again with their original sequence; return the ids queued."""
    letters = pending(session)
    if update_ids:
        wanted = set(update_ids)
        letters = [d for d in letters if d.update_id in wanted]
    if not letters:
        return []
    updates = [AcceptedUpdate(**{**d.body, "reply_to": None}) for d in letters]
    with redis.pipeline(transaction=True) as pipe:
        for update in updates:
            pipe.set(names.update_body_key(update.update_id), update.to_json())
        for update in updates:
            pipe.lpush(queue_list_key(update.queue), task_message(update.queue, [update], origin))
        pipe.execute()
    now = utcnow()
    for letter in letters:
        letter.replayed_at = now
    return [u.update_id for u in updates]
