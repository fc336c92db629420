"""Per-key rate limits: a token bucket in Redis, shared by every gateway process.

The script refills each bucket from the time elapsed (Redis's own clock, so gateways on
different machines agree), takes a token if there is one, and answers what the
`X-RateLimit-*` headers need. Requests that arrive together share one EVALSHA: under load a
round trip per request would cost more than everything else the request does.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from contactsync import names
from contactsync.errors import RateLimited

BURST_FACTOR = 2  # a bucket holds twice the rate: a key may burst to 2 seconds' worth at once
STATE_KEY = "rate_limit"  # where a request's decision waits for the response headers

# KEYS[i]: a bucket, a hash of `tokens` (may be fractional) and `ts` (microseconds); the same
# bucket may come several times. ARGV[2i-1]: its tokens per second; ARGV[2i]: its size.
# Returns, per bucket taken from, {allowed 0/1, whole tokens left, microseconds until full,
# microseconds until a token}, flattened.
TOKEN_BUCKET = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local buckets = {}  -- each bucket read and written once, however many requests it serves
local result = {}
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local bucket = buckets[KEYS[i]]
  if bucket == nil then
    local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    bucket = {tokens = tonumber(state[1]), ts = tonumber(state[2])}
    if bucket.tokens == nil or bucket.ts == nil then
      bucket.tokens = burst
      bucket.ts = now
    end
    buckets[KEYS[i]] = bucket
  end
  if now > bucket.ts then
    bucket.tokens = math.min(burst, bucket.tokens + (now - bucket.ts) * rate / 1000000)
    bucket.ts = now
  end
  local allowed = 0
  local wait = 0
  if bucket.tokens >= 1 then
    bucket.tokens = bucket.tokens - 1
    allowed = 1
  else
    wait = math.ceil((1 - bucket.tokens) * 1000000 / rate)
  end
  bucket.full_in = math.ceil((burst - bucket.tokens) * 1000000 / rate)
  local at = 4 * (i - 1)
  result[at + 1] = allowed
  result[at + 2] = math.floor(bucket.tokens)
  result[at + 3] = bucket.full_in
  result[at + 4] = wait
end
for key, bucket in pairs(buckets) do
  redis.call('HSET', key, 'tokens', tostring(bucket.tokens), 'ts', string.format('%.0f', bucket.ts))
  redis.call('PEXPIRE', key, math.ceil(bucket.full_in / 1000) + 1000)
end
return result
"""


@dataclass(frozen=True)
class RateDecision:
    """One request's place in its key's bucket."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_seconds).encode()),
        ]


class RateLimiter:
    """Take one token per request from the key's bucket, or refuse with 429."""

    def __init__(self, redis: Redis, default_rate: int) -> None:
        self._script = redis.register_script(TOKEN_BUCKET)
        self._default_rate = default_rate
        self._pending: list[tuple[str, int, asyncio.Future[RateDecision]]] = []
        self._taker: asyncio.Task[None] | None = None

    async def take(self, key_id: str, rate: int | None) -> RateDecision:
        """Spend a token of this key's bucket; the decision says whether there was one."""
        future: asyncio.Future[RateDecision] = asyncio.get_running_loop().create_future()
        self._pending.append((names.rate_limit_key(key_id), rate or self._default_rate, future))
        if self._taker is None:
            self._taker = asyncio.create_task(self._take_pending())
        return await future

    async def _take_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    reply: list[Any] = await self._script(
                        keys=[key for key, _, _ in batch],
                        args=[v for _, rate, _ in batch for v in (rate, rate * BURST_FACTOR)],
                    )
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for index, (_, rate, future) in enumerate(batch):
                    if not future.done():
                        allowed, remaining, full_in_us, wait_us = (
                            int(v) for v in reply[4 * index : 4 * index + 4]
                        )
                        future.set_result(RateDecision(
                            allowed=bool(allowed), limit=rate * BURST_FACTOR,
                            remaining=max(remaining, 0),
                            reset_seconds=math.ceil(full_in_us / 1_000_000),
                            retry_after_seconds=max(1, math.ceil(wait_us / 1_000_000)),
                        ))
        finally:
            self._taker = None


def refuse(decision: RateDecision) -> RateLimited:
    """Return the 429 for a request its bucket refused."""
    return RateLimited(
        f"Rate limit exceeded: this key may send {decision.limit // BURST_FACTOR} requests per "
        f"second (bursts of {decision.limit}).",
        retry_after=decision.retry_after_seconds,
    )
