"""The rate limiter against a real Redis: takes that arrive together share one script call."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from api_gateway.ratelimit import BURST_FACTOR, RateDecision, RateLimiter


async def _take_together(redis_url: str, takes: list[tuple[str, int]]) -> list[RateDecision]:
    redis = Redis.from_url(redis_url)
    try:
        limiter = RateLimiter(redis, default_rate=100)
        # Started in one tick: the limiter gathers them into one EVALSHA.
        return await asyncio.gather(*(limiter.take(key, rate) for key, rate in takes))
    finally:
        await redis.aclose()


def test_a_burst_of_one_key_spends_its_bucket_once_per_request(redis_base: str) -> None:
    key = f"test-{uuid.uuid4().hex}"
    rate = 5
    burst = rate * BURST_FACTOR
    started = time.monotonic()
    decisions = asyncio.run(_take_together(redis_base, [(key, rate)] * (burst + 5)))
    allowed = [d for d in decisions if d.allowed]
    refused = [d for d in decisions if not d.allowed]
    assert len(allowed) == burst
    assert len(refused) == 5
    # In arrival order: each allowed request sees the bucket one token lower.
    assert [d.remaining for d in decisions[:burst]] == list(range(burst - 1, -1, -1))
    assert all(d.retry_after_seconds >= 1 and d.limit == burst for d in refused)
    # The bucket was written back once, empty: the next request, alone, finds in it only what
    # came back since, at `rate` a second.
    (later,) = asyncio.run(_take_together(redis_base, [(key, rate)]))
    came_back = rate * (time.monotonic() - started)  # at most
    assert not later.allowed or came_back >= 1, (later, came_back)
    assert later.remaining <= came_back, (later, came_back)


def test_keys_taken_together_keep_their_own_buckets(redis_base: str) -> None:
    busy, quiet = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    takes = [(busy, 1)] * 3 + [(quiet, 50)]
    decisions = asyncio.run(_take_together(redis_base, takes))
    assert [d.allowed for d in decisions] == [True, True, False, True]
    assert decisions[-1].remaining == 50 * BURST_FACTOR - 1
    assert decisions[-1].limit == 50 * BURST_FACTOR
