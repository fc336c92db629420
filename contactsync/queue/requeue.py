"""Queue accepted updates again: after a dead worker lost their message, or from dead letters.

The accept script (`accept.lua`) writes an update's body, its pending entry and its task
message at once; `requeue` is the same write for an update already accepted, in one
transaction.
"""

from __future__ import annotations

import time

from redis import Redis

from contactsync import names
from contactsync.queue.wire import (
    UNACKED_KEY,
    priority_lists,
    queue_list_key,
    task_messages,
    unacked_update_ids,
    update_ids,
)
from contactsync.updates import AcceptedUpdate

REQUEUE_BATCH = 200  # most updates in one task message queued again
MAX_SCAN_MESSAGES = 10_000  # above this many messages waiting, no look for lost ones


def requeue(
    redis: Redis, updates: list[AcceptedUpdate], origin: str, *, store_bodies: bool,
    max_batch: int = 1, now_us: int | None = None,
) -> None:
    """Make these updates pending again, as of now, and queue task messages naming them.

    `store_bodies` writes each update's body too (a dead letter's body left Redis when it
    failed); without it only updates still pending are touched: one that finished meanwhile
    keeps its finished state (its message then finds it recorded, harmlessly).
    """
    if now_us is None:
        seconds, micros = redis.time()
        now_us = seconds * 1_000_000 + micros
    with redis.pipeline(transaction=True) as pipe:
        if store_bodies:
            for update in updates:
                pipe.set(names.update_body_key(update.update_id), update.to_json())
        if updates:
            # As of now, not as of its sequence: the orphan sweep waits a while after this.
            pipe.zadd(names.PENDING_KEY, {u.update_id: now_us for u in updates},
                      xx=not store_bodies)
        for queue, message in task_messages(updates, max_batch, origin):
            pipe.lpush(queue_list_key(queue), message)
        pipe.execute()


def requeue_orphans(
    redis: Redis, *, older_than_seconds: float, origin: str, limit: int = 5000,
    max_scan: int = MAX_SCAN_MESSAGES, recheck_seconds: float = 0.5,
) -> list[str]:
    """Queue again every pending update that no task message names any more; return their ids.

    kombu's Redis transport takes a message off its queue (BRPOP) and only then records it as
    unacknowledged (HSET): a worker killed between the two takes the message with it, and no
    visibility timeout brings it back. Its update is still pending, body and all, so an update
    pending for longer than `older_than_seconds` that no message names, in a queue or in
    `unacked`, gets a new message. A message queued twice by a race is harmless: applying is
    idempotent. While the queues hold more than `max_scan` messages nothing is done: in a
    backlog, old pending updates are most likely just waiting their turn, and reading every
    message would cost more than waiting for the backlog to shrink.
    """
    seconds, micros = redis.time()
    now = seconds * 1_000_000 + micros
    cutoff = now - int(older_than_seconds * 1_000_000)
    found: list[bytes] = redis.zrangebyscore(  # type: ignore[assignment]
        names.PENDING_KEY, "-inf", cutoff, start=0, num=limit
    )
    candidates = [i.decode() for i in found]
    if not candidates:
        return []
    keys = [key for queue in (names.UPDATES_QUEUE, names.BULK_QUEUE)
            for key in priority_lists(queue)]
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.llen(key)
        pipe.hlen(UNACKED_KEY)
        if sum(pipe.execute()) > max_scan:
            return []
    orphans = _not_named(redis, keys, candidates)
    if orphans and recheck_seconds:
        # A message being delivered is in neither place for a few milliseconds (between the
        # BRPOP and the HSET): only what is still not named a moment later is lost.
        time.sleep(recheck_seconds)
        orphans = _not_named(redis, keys, orphans)
    if not orphans:
        return []
    updates, finished = [], []
    for update_id, raw in zip(orphans, redis.mget([names.update_body_key(i) for i in orphans]),
                              strict=True):
        try:
            updates.append(AcceptedUpdate.from_json(raw or b""))
        except (TypeError, ValueError):
            finished.append(update_id)  # finished meanwhile, or unreadable: nothing to queue
    if finished:
        redis.zrem(names.PENDING_KEY, *finished)
    requeue(redis, updates, origin, store_bodies=False, max_batch=REQUEUE_BATCH, now_us=now)
    return [u.update_id for u in updates]


def _not_named(redis: Redis, keys: list[str], candidates: list[str]) -> list[str]:
    """Return those of `candidates` that no message in `keys` or in `unacked` names."""
    with redis.pipeline(transaction=True) as pipe:  # one snapshot of every message
        for key in keys:
            pipe.lrange(key, 0, -1)
        pipe.hvals(UNACKED_KEY)
        *lists, unacked = pipe.execute()
    named: set[str] = set()
    for raw in (m for messages in lists for m in messages):
        named.update(update_ids(raw))
    for raw in unacked:
        named.update(unacked_update_ids(raw))
    return [i for i in candidates if i not in named]
