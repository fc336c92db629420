"""Per-key rate limits: a token bucket in Redis, shared by every gateway process.

One EVALSHA per request: the script refills the bucket from the time elapsed (Redis's own
clock, so gateways on different machines agree), takes a token if there is one, and answers
what the `X-RateLimit-*` headers need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contactsync import names
from contactsync.errors import RateLimited

BURST_FACTOR = 2  # a bucket holds twice the rate: a key may burst to 2 seconds' worth at once
STATE_KEY = "rate_limit"  # where a request's decision waits for the response headers

# KEYS[1]: the bucket, a hash of `tokens` (may be fractional) and `ts` (microseconds).
# ARGV[1]: tokens per second; ARGV[2]: bucket size.
# Returns {allowed 0/1, whole tokens left, microseconds until full, microseconds until a token}.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
  ts = now
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
local full_in = math.ceil((burst - tokens) * 1000000 / rate)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', string.format('%.0f', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(full_in / 1000) + 1000)
return {allowed, math.floor(tokens), full_in, wait}
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

    async def take(self, key_id: str, rate: int | None) -> RateDecision:
        """Spend a token of this key's bucket; raise `RateLimited` when it is empty."""
        rate = rate or self._default_rate
        burst = rate * BURST_FACTOR
        key = names.rate_limit_key(key_id)
        reply: list[Any] = await self._script(keys=[key], args=[rate, burst])
        allowed, remaining, full_in_us, wait_us = (int(v) for v in reply)
        return RateDecision(
            allowed=bool(allowed), limit=burst, remaining=max(remaining, 0),
            reset_seconds=math.ceil(full_in_us / 1_000_000),
            retry_after_seconds=max(1, math.ceil(wait_us / 1_000_000)),
        )


def refuse(decision: RateDecision) -> RateLimited:
    """Return the 429 for a request its bucket refused."""
    return RateLimited(
        f"Rate limit exceeded: this key may send {decision.limit // BURST_FACTOR} requests per "
        f"second (bursts of {decision.limit}).",
        retry_after=decision.retry_after_seconds,
    )


class RateLimitHeaders:
    """Add `X-RateLimit-*` to every response of a request whose key took a token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_wrapper(message: Message) -> None:
            decision = state.get(STATE_KEY)
            if message["type"] == "http.response.start" and decision is not None:
                message["headers"] = [*message.get("headers", ()), *decision.headers()]
            await send(message)

        await self.app(scope, receive, send_wrapper)
