"""The outbox relay: publish committed change events to the Redis stream, then drop them."""

from __future__ import annotations

import logging
import threading

from redis import Redis
from sqlalchemy import delete, select

from contactsync.db import Database
from contactsync.models import OutboxEvent
from contactsync.settings import Settings

log = logging.getLogger("contactsync.relay")


def relay_once(db: Database, redis: Redis, settings: Settings) -> int:
    """Publish one batch of outbox events; return how many were published.

    Delivery is at least once: a crash between XADD and the commit publishes a batch again,
    and consumers dedupe by event id.
    """
    with db.unit_of_work() as session:
        rows = session.execute(
            select(OutboxEvent.id, OutboxEvent.payload)
            .order_by(OutboxEvent.id)
            .limit(settings.relay_batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return 0
        with redis.pipeline(transaction=False) as pipe:
            for _, payload in rows:
                pipe.xadd(
                    settings.events_stream, {"event": payload},
                    maxlen=settings.events_stream_maxlen, approximate=True,
                )
            pipe.execute()
        session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_([r.id for r in rows])))
    return len(rows)


class RelayThread(threading.Thread):
    """Run the relay in the background of a worker's main process until stopped."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="contactsync-relay", daemon=True)
        self._settings = settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        db = Database(self._settings, write_heavy=True)
        redis = Redis.from_url(self._settings.redis_url, socket_timeout=10)
        try:
            while not self._stop_event.is_set():
                try:
                    published = relay_once(db, redis, self._settings)
                except Exception:
                    log.warning("relay pass failed; will retry", exc_info=True)
                    published = 0
                if published < self._settings.relay_batch_size:
                    self._stop_event.wait(self._settings.relay_interval_seconds)
            while relay_once(db, redis, self._settings):  # drain before the worker exits
                pass
        except Exception:
            log.warning("relay stopped with events left in the outbox", exc_info=True)
        finally:
            db.dispose()
            redis.close()

    def stop(self, timeout: float = 10) -> None:
        self._stop_event.set()
        self.join(timeout)
