"""Per-key rate limits: a token bucket in Redis, shared by every gateway process.

The script (contactsync/lua/token_bucket.lua) refills each bucket from the time elapsed,
takes a token if there is one, and answers what the `X-RateLimit-*` headers need. Requests
that arrive together share one EVALSHA: under load a round trip per request would cost more
than everything else the request does. The contact PUT spends its token in the accept
script instead (contactsync/queue/accept.py), in the same round trip that queues its update.
Either way a request spends through its `Token`, the one way in.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from starlette.requests import Request

from contactsync import names, scripts
from contactsync.errors import ClientError, RateLimited
from contactsync.keys import Principal
from contactsync.queue.accept import Accepted, BucketState, RateLimit, RateRefused

BURST_FACTOR = 2  # a bucket holds twice the rate: a key may burst to 2 seconds' worth at once
UPDATE_BURST_FACTOR = 10  # an update bucket holds ten seconds' worth...
MIN_UPDATE_BURST = 1000  # ...and at least a full batch, so that any batch can pass in time
STATE_KEY = "rate_limit"  # where a request's Token waits for the response headers


@dataclass(frozen=True)
class RateDecision:
    """One request's place in its key's bucket."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int

    @classmethod
    def of(cls, rate: int, state: BucketState) -> RateDecision:
        """Return the decision a bucket of `rate` tokens a second gave."""
        return cls(
            allowed=state.allowed, limit=rate * BURST_FACTOR, remaining=max(state.remaining, 0),
            reset_seconds=math.ceil(state.full_in_us / 1_000_000),
            retry_after_seconds=max(1, math.ceil(state.wait_us / 1_000_000)),
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_seconds).encode()),
        ]


class RateLimiter:
    """Take one token per request from the key's bucket, or refuse with 429."""

    def __init__(self, redis: Redis, default_rate: int, default_update_rate: int = 1000) -> None:
        self._script = redis.register_script(scripts.RATE_LIMIT)
        self._take_tokens = redis.register_script(scripts.TAKE_TOKENS)
        self._default_rate = default_rate
        self._default_update_rate = default_update_rate
        self._pending: list[tuple[str, int, asyncio.Future[RateDecision]]] = []
        self._taker: asyncio.Task[None] | None = None
        self._empty_until: dict[str, float] = {}

    def note_empty(self, key_id: str, state: BucketState) -> None:
        """Remember that this key's bucket has no token for `state.wait_us` more.

        Meanwhile its contact PUTs take a token of their own before anything else (and are
        refused at once, body unread) instead of joining a flush: each refusal in a flush
        sends the whole flush, every other key's updates with it, to Redis a second time.
        """
        if len(self._empty_until) > 10_000:
            self._empty_until.clear()
        self._empty_until[key_id] = time.monotonic() + state.wait_us / 1_000_000

    def known_empty(self, key_id: str) -> bool:
        until = self._empty_until.get(key_id)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._empty_until[key_id]
        return False

    def limit_of(self, key_id: str, rate: int | None) -> RateLimit:
        """Return the bucket a request of this key spends from, for the accept script."""
        rate = rate or self._default_rate
        return RateLimit(names.rate_limit_key(key_id), rate, rate * BURST_FACTOR)

    async def take(self, key_id: str, rate: int | None) -> RateDecision:
        """Spend a token of this key's bucket; the decision says whether there was one."""
        future: asyncio.Future[RateDecision] = asyncio.get_running_loop().create_future()
        self._pending.append((names.rate_limit_key(key_id), rate or self._default_rate, future))
        if self._taker is None:
            self._taker = asyncio.create_task(self._take_pending())
        return await future

    async def take_updates(self, key_id: str, rate: int | None, count: int) -> None:
        """Spend `count` tokens of this key's update bucket at once; 429 when it has fewer.

        A batch's items: one round trip per batch, besides its request token. All or none,
        so a refused batch changes nothing.
        """
        rate = rate or self._default_update_rate
        burst = max(rate * UPDATE_BURST_FACTOR, MIN_UPDATE_BURST)
        reply = await self._take_tokens(
            keys=[names.update_rate_limit_key(key_id)], args=[rate, burst, count]
        )
        allowed, _, _, wait_us = (int(v) for v in reply)
        if not allowed:
            raise RateLimited(
                f"Update rate limit exceeded: this key may send {rate} batch items per second "
                f"(bursts of {burst}); this batch holds {count}.",
                retry_after=max(1, math.ceil(wait_us / 1_000_000)),
            )

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
                        state = BucketState(bool(allowed), remaining, full_in_us, wait_us)
                        future.set_result(RateDecision.of(rate, state))
        finally:
            self._taker = None


def refuse(decision: RateDecision) -> RateLimited:
    """Return the 429 for a request its bucket refused."""
    return RateLimited(
        f"Rate limit exceeded: this key may send {decision.limit // BURST_FACTOR} requests per "
        f"second (bursts of {decision.limit}).",
        retry_after=decision.retry_after_seconds,
    )


class Token:
    """One request's rate-limit token: each request with a key spends exactly one, and its
    answer, whatever it is, carries what the bucket said (`api_gateway.edge` adds the
    `X-RateLimit-*` headers from `decision`; a 429 also says `Retry-After`).

    `spend()` takes it at once. The contact PUT enters it instead (`async with`), to have the
    accept script spend it in the round trip that queues the update: `for_script()` hands the
    script the bucket and `settle()` takes its answer. A request that leaves without the
    script having spent its token (refused before queueing, a replay, a backlog refusal)
    spends it on the way out, and over its key's limit is answered 429 whatever else was
    wrong with it.
    """

    def __init__(self, request: Request, principal: Principal) -> None:
        self._limiter: RateLimiter = request.app.state.rate_limiter
        self._key_id = principal.key_id
        self._limit = self._limiter.limit_of(principal.key_id, principal.rate_limit_per_second)
        self.decision: RateDecision | None = None
        setattr(request.state, STATE_KEY, self)

    async def spend(self) -> None:
        """Spend the token now unless it was spent; 429 when the bucket has none."""
        if self.decision is None:
            self._decide(await self._limiter.take(self._key_id, self._limit.rate))

    def for_script(self) -> RateLimit | None:
        """Return the bucket the accept script is to spend from; None once spent."""
        return self._limit if self.decision is None else None

    def settle(self, outcome: object) -> None:
        """Take the accept script's answer; 429 when the bucket had no token."""
        if isinstance(outcome, RateRefused):
            self._limiter.note_empty(self._key_id, outcome.bucket)
            self._decide(RateDecision.of(self._limit.rate, outcome.bucket))
        elif isinstance(outcome, Accepted) and outcome.bucket is not None:
            self._decide(RateDecision.of(self._limit.rate, outcome.bucket))

    def _decide(self, decision: RateDecision) -> None:
        self.decision = decision
        if not decision.allowed:
            raise refuse(decision)

    async def __aenter__(self) -> Token:
        if self._limiter.known_empty(self._key_id):  # over its limit a moment ago: refused
            await self.spend()  # here, most likely, instead of sending a flush twice
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, ClientError):
            await self.spend()
