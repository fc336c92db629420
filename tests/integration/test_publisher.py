"""The gateway's publisher (api_gateway/publisher.py) against a real Redis: what it gathers
into one flush, and when it stops waiting for more."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator

import orjson
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from api_gateway.publisher import Publisher
from contactsync.queue.accept import Accepted, AcceptOutcome, Enqueuer, Submission
from contactsync.queue.wire import queue_list_key
from contactsync.settings import Settings

QUEUE = "tests.publisher"  # no worker reads it


@pytest.fixture
def redis(redis_client: Redis) -> Iterator[Redis]:
    def empty() -> None:
        keys = [*redis_client.scan_iter("contactsync:*"), queue_list_key(QUEUE)]
        if keys:
            redis_client.delete(*keys)

    empty()
    yield redis_client
    empty()


def _submission(n: int, reply_to: str | None = None) -> Submission:
    return Submission(update_id=f"upd_publisher{n:04d}", account_id="acc_publisher",
                      contact_id=f"cnt_{n}", patch={"company": f"C{n}"}, queue=QUEUE,
                      reply_to=reply_to)


def _run(
    settings: Settings, body: Callable[[Publisher], Awaitable[None]], *, linger: float,
    wait_linger: float,
) -> None:
    async def run() -> None:
        client = AsyncRedis.from_url(settings.redis_url)
        enqueuer = Enqueuer(client, idempotency_ttl=60, max_batch=200, origin="tests")
        publisher = Publisher(enqueuer, linger_seconds=linger, wait_linger_seconds=wait_linger,
                              max_batch=200)
        publisher.start()
        try:
            await body(publisher)
        finally:
            await publisher.stop()
            await client.aclose()

    asyncio.run(run())


def _messages(redis: Redis) -> list[list[str]]:
    raw = redis.lrange(queue_list_key(QUEUE), 0, -1)
    return [orjson.loads(base64.b64decode(orjson.loads(m)["body"]))[0][0] for m in raw]


def test_submissions_made_together_go_in_one_flush(settings: Settings, redis: Redis) -> None:
    async def body(publisher: Publisher) -> None:
        outcomes = await asyncio.gather(*(publisher.submit(_submission(n)) for n in range(30)))
        assert all(isinstance(o, Accepted) for o in outcomes)

    _run(settings, body, linger=0.05, wait_linger=0.05)
    assert [sorted(m) for m in _messages(redis)] == [
        sorted(f"upd_publisher{n:04d}" for n in range(30))
    ]


def test_a_lone_async_submission_does_not_wait_out_the_linger(
    settings: Settings, redis: Redis
) -> None:
    # With nothing else in hand, waiting for company would only idle the process.
    async def body(publisher: Publisher) -> None:
        started = time.monotonic()
        await publisher.submit(_submission(1))
        assert time.monotonic() - started < 2.5

    _run(settings, body, linger=5.0, wait_linger=5.0)
    assert _messages(redis) == [["upd_publisher0001"]]


def test_a_default_mode_submission_waits_for_company(settings: Settings, redis: Redis) -> None:
    # Its client waits for a worker anyway: fewer, larger messages are worth a few ms.
    async def body(publisher: Publisher) -> None:
        started = time.monotonic()
        first = asyncio.ensure_future(publisher.submit(_submission(1, reply_to="channel")))
        await asyncio.sleep(0.1)
        await publisher.submit(_submission(2))
        await first
        assert time.monotonic() - started >= 0.3

    _run(settings, body, linger=0.001, wait_linger=0.3)
    assert [sorted(m) for m in _messages(redis)] == [["upd_publisher0001", "upd_publisher0002"]]


def test_a_batch_larger_than_a_flush_still_goes_in_one(settings: Settings, redis: Redis) -> None:
    # One flush is what lets the accept script take or refuse a batch whole (an account's
    # backlog limit): split, its first part could be queued and the rest refused.
    flushes: list[int] = []

    async def run() -> None:
        client = AsyncRedis.from_url(settings.redis_url)
        enqueuer = Enqueuer(client, idempotency_ttl=60, max_batch=200, origin="tests")
        accept = enqueuer.accept

        async def counted(submissions: list[Submission]) -> list[AcceptOutcome]:
            flushes.append(len(submissions))
            return await accept(submissions)

        enqueuer.accept = counted  # type: ignore[method-assign,assignment]
        publisher = Publisher(enqueuer, linger_seconds=0.001, max_batch=200)
        publisher.start()
        try:
            outcomes = await publisher.submit_many([_submission(n) for n in range(1000)])
            assert all(isinstance(o, Accepted) for o in outcomes)
        finally:
            await publisher.stop()
            await client.aclose()

    asyncio.run(run())
    assert flushes == [1000]  # four times max_batch is where a flush is cut otherwise
