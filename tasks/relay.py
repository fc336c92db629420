"""The outbox relay: publish committed change events to the Redis stream, then drop them."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from redis import Redis
from sqlalchemy import ARRAY, Delete, Integer, any_, cast, delete, select
from sqlalchemy.orm import Session

from contactsync import names, scripts
from contactsync.db import Database
from contactsync.logs import configure
from contactsync.models import OutboxEvent
from contactsync.queue.requeue import requeue_orphans
from contactsync.settings import Settings, get_settings
from contactsync.supervise import exit_with_parent
from contactsync.timeutil import utcnow
from contactsync.webhook_fanout import EndpointDirectory, fan_out
from tasks import account_backlog
from tasks.retry import backoff_seconds
from tasks.webhook_dispatch import dispatch_once, prune_now_and_then
from worker.app import sweep_interval

log = logging.getLogger("contactsync.relay")

MAX_BACKOFF_SECONDS = 5.0  # the longest pause between failed passes


def relay_once(
    db: Database, redis: Redis, settings: Settings, endpoints: EndpointDirectory | None = None
) -> int:
    """Publish one batch of outbox events; return how many were published.

    Delivery is at least once: a crash between XADD and the commit publishes a batch again,
    and consumers dedupe by event id. In the same transaction, the events some webhook
    endpoint wants become its pending deliveries (contactsync/webhook_fanout.py).
    """
    endpoints = endpoints or EndpointDirectory(ttl=0)
    with db.unit_of_work() as session:
        rows = session.execute(
            select(OutboxEvent.id, OutboxEvent.payload)
            .order_by(OutboxEvent.id)
            .limit(settings.relay_batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return 0
        publish = redis.register_script(scripts.PUBLISH_EVENTS)  # EVALSHA; loaded on need
        for chunk in chunks_by_size([p for _, p in rows], settings.relay_call_max_bytes):
            publish(keys=[settings.events_stream], args=[settings.events_stream_maxlen, *chunk])
        fan_out(session, [p for _, p in rows], endpoints.get(session), utcnow())
        session.execute(_published(session, [r.id for r in rows]))
    return len(rows)


def _published(session: Session, ids: list[int]) -> Delete:
    """Return the DELETE of the outbox rows `ids`. On PostgreSQL the ids go as one array:
    an `IN` of 500 parameters cost the relay half its CPU to compile and convert
    (docs/benchmarks.md, "Session 10: a bulk update's CPU")."""
    if session.get_bind().dialect.name == "postgresql":
        return delete(OutboxEvent).where(OutboxEvent.id == any_(cast(ids, ARRAY(Integer))))
    return delete(OutboxEvent).where(OutboxEvent.id.in_(ids))


def chunks_by_size(payloads: list[str], max_bytes: int) -> Iterator[list[str]]:
    """Split `payloads`, in order, into runs of at most `max_bytes` (UTF-8) each.

    One script call holds every argument in Redis's memory at once, and Redis refuses a
    command past its query buffer limit (1 GiB) and an argument past 512 MiB: a pass of 500
    large events once made a call of gigabytes. A payload larger than `max_bytes` goes alone.
    """
    chunk: list[str] = []
    size = 0
    for payload in payloads:
        length = len(payload.encode())
        if chunk and size + length > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(payload)
        size += length
    if chunk:
        yield chunk


def requeue_lost(redis: Redis, settings: Settings) -> int:
    """Queue again the updates whose task message a dead worker took with it; return how many.
    Then, at most once a minute, correct the accounts' backlog counts (tasks/account_backlog.py).

    One relay at a time does it, at most once per sweep interval (a lock key that expires).
    """
    every = sweep_interval(settings)
    try:
        if not redis.set(names.REQUEUE_LOCK_KEY, os.getpid(), nx=True, ex=every):
            return 0
        update_ids = requeue_orphans(
            redis, older_than_seconds=settings.visibility_timeout_seconds,
            origin=f"relay@{settings.instance_name}:{os.getpid()}",
        )
        dropped = 0
        # Less often than the sweep: a count drifts only when a worker dies mid-finish, and at
        # the largest backlog a reconcile holds this relay about 0.3 s (docs/benchmarks.md).
        if redis.set(names.RECONCILE_LOCK_KEY, os.getpid(), nx=True,
                     ex=account_backlog.RECONCILE_EVERY_SECONDS):
            dropped = account_backlog.reconcile(redis)
    except Exception as exc:  # Redis is down, most likely: the relay pass says so already
        log.warning("looking for lost task messages failed (%s); will retry",
                    type(exc).__name__)
        return 0
    if dropped:
        log.info("dropped %d finished updates from their account's backlog count", dropped)
    if update_ids:
        log.warning("queued %d updates again, their task message was lost: %s",
                    len(update_ids), ", ".join(update_ids[:20]))
    return len(update_ids)


def run_relay(settings: Settings, stop: threading.Event) -> None:
    """Publish outbox events until `stop` is set, then drain.

    Each pass also hands due webhook deliveries to their tasks (tasks/webhook_dispatch.py).
    Between passes, look for pending updates that lost their task message (`requeue_lost`).
    """
    db = Database(settings)
    redis = Redis.from_url(settings.redis_url, socket_timeout=10)
    next_sweep = time.monotonic()
    failures = 0
    endpoints = EndpointDirectory(settings.webhook_endpoints_cache_seconds, redis)
    try:
        while not stop.is_set():
            try:
                published = relay_once(db, redis, settings, endpoints)
                dispatch_once(db, redis, settings)
                failures = 0
            except Exception:
                # While Redis or the database is down: the traceback once, then one line per
                # pass, and passes further apart (up to MAX_BACKOFF_SECONDS).
                failures += 1
                log.warning("relay pass failed; will retry (%d in a row)", failures,
                            exc_info=failures == 1)
                published = 0
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + sweep_interval(settings)
                requeue_lost(redis, settings)
                prune_now_and_then(db, redis, settings)
            if published < settings.relay_batch_size:
                interval = settings.relay_interval_seconds
                stop.wait(backoff_seconds(failures, MAX_BACKOFF_SECONDS, base=interval)
                          if failures else interval)
        while relay_once(db, redis, settings, endpoints):  # drain before the worker exits
            pass
    except Exception:
        log.warning("relay stopped with events left in the outbox", exc_info=True)
    finally:
        db.dispose()
        redis.close()


def _relay_process_main(parent_pid: int) -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # both mean: drain, then exit
        signal.signal(signum, lambda *_: stop.set())
    settings = get_settings()
    configure(settings)  # as the worker logs: JSON lines unless stderr is a terminal
    exit_with_parent(parent_pid, stop.set)  # a worker killed outright: drain, then exit
    run_relay(settings, stop)


if __name__ == "__main__":
    _relay_process_main(int(sys.argv[1]))
