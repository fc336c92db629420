"""How long the updates a dead worker held take to be applied after its death (DESIGN §3)."""

from __future__ import annotations

import threading
import time

from redis import Redis
from sqlalchemy import func, select

from bench.faults.oracle import FINISHED
from contactsync import names
from contactsync.db import Database
from contactsync.models import UpdateRecord
from contactsync.queue.wire import UNACKED_KEY, unacked_update_ids, update_ids
from contactsync.settings import Settings

# DESIGN §3: every update a dead worker had taken is applied within this of its death.
RECOVERY_SECONDS = 15.0


def held_updates(redis: Redis) -> tuple[list[str], int]:
    """Return the updates a dead worker held, and how many of them no `unacked` entry names.

    Read once it was the only worker: every pending update that no queued message names was
    its own, whether its message sits in `unacked` or vanished with it (taken off the queue,
    not yet recorded). One snapshot, as the load goes on.
    """
    queues = [names.UPDATES_QUEUE, names.BULK_QUEUE]
    with redis.pipeline(transaction=True) as pipe:
        pipe.zrange(names.PENDING_KEY, 0, -1)
        for queue in queues:
            pipe.lrange(queue, 0, -1)
        pipe.hvals(UNACKED_KEY)
        pending, *lists, unacked = pipe.execute()
    queued = {i for messages in lists for raw in messages for i in update_ids(raw)}
    in_unacked = {i for raw in unacked for i in unacked_update_ids(raw)}
    held = [i.decode() for i in pending if i.decode() not in queued]
    return held, len(set(held) - in_unacked)


class RecoveryClock:
    """From a worker's death, time until every update it held has a finished record."""

    def __init__(self, database_url: str, update_ids: list[str], timeout: float) -> None:
        self.update_ids = update_ids
        self.seconds: float | None = None  # None: not all finished within `timeout`
        self._started = time.monotonic()
        self._db = Database(Settings(database_url=database_url))
        self._deadline = self._started + timeout
        self._thread = threading.Thread(target=self._run, daemon=True, name="recovery-clock")
        self._thread.start()

    def _finished(self) -> int:
        with self._db.reading() as session:
            return session.scalar(
                select(func.count()).select_from(UpdateRecord).where(
                    UpdateRecord.update_id.in_(self.update_ids),
                    UpdateRecord.status.in_(FINISHED),
                )
            ) or 0

    def _run(self) -> None:
        try:
            while time.monotonic() < self._deadline:
                try:
                    if self._finished() >= len(self.update_ids):
                        self.seconds = time.monotonic() - self._started
                        return
                except Exception:  # the database restarting, say: look again
                    pass
                time.sleep(0.1)
        finally:
            self._db.dispose()

    def result(self) -> float | None:
        """Wait for the clock to stop; return the seconds (None if it ran out)."""
        self._thread.join()
        return self.seconds
