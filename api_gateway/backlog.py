"""Backlog limit: refuse new updates while the queues hold more than `max_backlog` of them.

The request path only reads a flag. A background task refreshes it every
`backlog_refresh_seconds` with one pipelined Redis round trip: the queue lengths count task
messages, and one message carries 1 to `publish_max_batch` updates, so when the lengths alone
cannot decide, a few messages from each end of each queue are read to count their updates.
Nothing queued is ever dropped: only new updates are refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Sequence
from typing import Annotated

import orjson
from fastapi import Depends, Request
from prometheus_client import Gauge
from redis.asyncio import Redis

from api_gateway.background import cancel_and_wait
from contactsync import names
from contactsync.celery_message import queue_list_key
from contactsync.errors import ServiceUnavailable

log = logging.getLogger("contactsync.gateway")

QUEUES = (names.UPDATES_QUEUE, names.BULK_QUEUE)
RETRY_AFTER_SECONDS = 5  # workers drain thousands of updates a second: a few seconds is plenty
SAMPLE = 8  # messages read from each end of a queue when its length alone cannot decide

BACKLOG = Gauge(
    "contactsync_gateway_backlog_updates", "Updates the queues held at the last refresh"
)


def updates_in(message: bytes) -> int:
    """Return how many updates one queued task message carries (1 if it cannot tell)."""
    try:
        envelope = orjson.loads(message)
        args = orjson.loads(base64.b64decode(envelope["body"]))[0]
        return max(1, len(args[0]))
    except Exception:
        return 1  # not ours, or not readable: count it as one


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
        self, redis: Redis, *, max_backlog: int, interval: float, max_per_message: int
    ) -> None:
        self._redis = redis
        self._max = max_backlog
        self._interval = interval
        self._max_per_message = max_per_message
        self._task: asyncio.Task[None] | None = None
        self.updates = 0
        self.messages = 0  # task messages no worker has taken yet

    def backlogged(self) -> bool:
        """Tell whether the workers are behind: messages wait that none of them has taken."""
        return self.messages > 0

    @property
    def over(self) -> bool:
        return self.updates > self._max

    def check(self) -> None:
        """Refuse a new update with 503 while the backlog is over its limit."""
        if self.over:
            raise ServiceUnavailable(
                "Too many updates are waiting to be applied; retry shortly.",
                retry_after=RETRY_AFTER_SECONDS,
            )

    async def start(self) -> None:
        with contextlib.suppress(Exception):  # Redis down: requests fail on their own anyway
            await self.refresh()
        self._task = asyncio.create_task(self._run(), name="contactsync-backlog")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def refresh(self) -> None:
        """Read the queue lengths, and sample messages where the lengths cannot decide."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for queue in QUEUES:
                pipe.llen(queue_list_key(queue))
            lengths = [int(n) for n in await pipe.execute()]
        self.messages = total_low = sum(lengths)  # every message carries at least one update
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


async def accepting_updates(request: Request) -> None:
    """Refuse a new update while the backlog is over its limit (after authentication)."""
    # async: FastAPI runs a plain `def` dependency in a thread, a costly hop on every request
    gauge: BacklogGauge = request.app.state.backlog
    gauge.check()


# A route parameter of this type runs the check where it stands among the dependencies.
AcceptingUpdates = Annotated[None, Depends(accepting_updates)]
