"""Backlog limits: the account that fills the backlog is the one refused.

Each account may have at most `max_account_backlog` updates waiting; the accept script counts
them (one sorted set per account in Redis) and refuses, atomically across every gateway
process, the updates that would take their account over. While the queues as a whole hold
more than `max_backlog`, an account's limit drops to a tenth of that: the accounts holding
most of the backlog are refused, and one with little waiting (single PUTs) is not.

The request path only reads the global figure, as the limit it passes the script. A
background task refreshes it every `backlog_refresh_seconds` with one pipelined Redis round
trip: the queue lengths count task messages, and one message carries 1 to
`publish_max_batch` updates, so when the lengths alone cannot decide, a few messages from each
end of each queue are read to count their updates. Nothing queued is ever dropped: only new
updates are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from prometheus_client import Gauge
from redis.asyncio import Redis

from api_gateway.background import cancel_and_wait
from contactsync import names
from contactsync.errors import ServiceUnavailable
from contactsync.queue.wire import queue_list_key, updates_in

log = logging.getLogger("contactsync.gateway")

QUEUES = (names.UPDATES_QUEUE, names.BULK_QUEUE)
RETRY_AFTER_SECONDS = 5  # workers drain thousands of updates a second: a few seconds is plenty
SHARE_WHEN_FULL = 10  # over max_backlog, an account may hold a tenth of it
SAMPLE = 8  # messages read from each end of a queue when its length alone cannot decide
# Refreshes in a row that must find messages waiting before the workers count as behind. A
# message pushed a moment before a worker's next BRPOP is now and then caught waiting by one
# refresh while no worker is behind at all; every default-mode PUT of the next refresh
# interval then lingered 50 ms instead of 10 (api_gateway/publisher.py), a tail of its own
# (docs/benchmarks.md, "Issue 13"). A real backlog is still there at the next refresh.
BEHIND_AFTER = 2

BACKLOG = Gauge(
    "contactsync_gateway_backlog_updates", "Updates the queues held at the last refresh"
)


def estimate(length: int, sample: Sequence[bytes]) -> int:
    """Return the updates in a queue of `length` messages, of which `sample` were read."""
    if not sample:
        return length
    counted = sum(updates_in(m) for m in sample)
    if len(sample) >= length:
        return counted
    return round(length * counted / len(sample))


class BacklogGauge:
    """How many updates wait in the queues, as of at most one refresh interval ago."""

    def __init__(
        self, redis: Redis, *, max_backlog: int, interval: float, max_per_message: int,
        max_account_backlog: int | None = None,
    ) -> None:
        self._redis = redis
        self._max = max_backlog
        self._max_account = max_account_backlog or max(1, max_backlog // 2)
        self._refused: set[str] = set()
        self._interval = interval
        self._max_per_message = max_per_message
        self._task: asyncio.Task[None] | None = None
        self.updates = 0
        self.messages = 0  # task messages no worker has taken yet
        self._waiting_refreshes = 0  # refreshes in a row that found messages waiting

    def backlogged(self) -> bool:
        """Tell whether the workers are behind: messages have waited, untaken, at the last
        `BEHIND_AFTER` refreshes."""
        return self._waiting_refreshes >= BEHIND_AFTER

    @property
    def over(self) -> bool:
        return self.updates > self._max

    def account_limit(self) -> int:
        """Return the most updates an account may have waiting, as of the last refresh."""
        if self.over:
            return min(self._max_account, max(1, self._max // SHARE_WHEN_FULL))
        return self._max_account

    def note_refused(self, account_id: str) -> None:
        """Remember that the accept script refused this account, until the next refresh.

        Meanwhile its updates are refused before their body is read: each refusal in a flush
        sends the rest of the flush, other accounts' updates with it, to Redis a second time.
        """
        self._refused.add(account_id)

    def check(self, account_id: str) -> None:
        """Refuse with 503 an account the accept script refused since the last refresh."""
        if account_id in self._refused:
            raise refusal()

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # Redis down: requests fail on their own anyway
            await self.refresh()
        self._task = asyncio.create_task(self._run(), name="contactsync-backlog")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def refresh(self) -> None:
        """Read the queue lengths, and sample messages where the lengths cannot decide."""
        self._refused.clear()  # the script decides again, once per account and refresh
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in QUEUES:
                pipe.llen(queue_list_key(queue))
            lengths = [int(n) for n in await pipe.execute()]
        self.messages = total_low = sum(lengths)  # every message carries at least one update
        self._waiting_refreshes = self._waiting_refreshes + 1 if total_low else 0
        total_high = total_low * self._max_per_message
        if total_low > self._max or total_high <= self._max:
            self.updates = total_low
        else:
            self.updates = await self._sampled(lengths)
        BACKLOG.set(self.updates)

    async def _sampled(self, lengths: list[int]) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue, length in zip(QUEUES, lengths, strict=True):
                key = queue_list_key(queue)
                if length <= 2 * SAMPLE:
                    pipe.lrange(key, 0, -1)
                else:
                    pipe.lrange(key, 0, SAMPLE - 1)
                    pipe.lrange(key, -SAMPLE, -1)
            replies = iter(await pipe.execute())
        total = 0
        for length in lengths:
            sample = list(next(replies))
            if length > 2 * SAMPLE:
                sample += next(replies)
            total += estimate(length, sample)
        return total

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("backlog refresh failed: %s", type(exc).__name__)


def refusal() -> ServiceUnavailable:
    """Return the 503 for an update its account's backlog has no room for."""
    return ServiceUnavailable(
        "Too many updates of this account are waiting to be applied; retry shortly.",
        retry_after=RETRY_AFTER_SECONDS,
    )
