"""The backlog gauge (api_gateway/backlog.py) against a real Redis: when the workers count as
behind, which makes a default-mode flush linger five times as long."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from api_gateway import backlog
from api_gateway.backlog import BacklogGauge
from contactsync.queue.wire import queue_list_key
from contactsync.settings import Settings

QUEUE = "tests.backlog"  # no worker reads it


@pytest.fixture
def queue(redis_client: Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # The gauge reads the product's queues, which a session's workers may be reading: this
    # test's gauge reads a queue of its own instead.
    monkeypatch.setattr(backlog, "QUEUES", (QUEUE,))
    redis_client.delete(queue_list_key(QUEUE))
    yield queue_list_key(QUEUE)
    redis_client.delete(queue_list_key(QUEUE))


def test_behind_only_when_two_refreshes_in_a_row_find_messages_waiting(
    settings: Settings, redis_client: Redis, queue: str
) -> None:
    async def run() -> list[bool]:
        redis = AsyncRedis.from_url(settings.redis_url)
        gauge = BacklogGauge(redis, max_backlog=1000, interval=60, max_per_message=200)
        seen = []
        try:
            for waiting in (1, 0, 1, 1, 1, 0):
                redis_client.delete(queue)
                if waiting:
                    redis_client.lpush(queue, b"{}")
                await gauge.refresh()
                seen.append(gauge.backlogged())
        finally:
            await redis.aclose()
        return seen

    # A message caught once (between a push and a worker's next pop) is no backlog.
    assert asyncio.run(run()) == [False, False, False, True, True, False]
