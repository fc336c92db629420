"""The gateway's key cache on a real database: a flood of unknown keys costs a bounded number of
queries, and never costs a valid key its cache entry."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from sqlalchemy import event

from api_gateway.key_cache import MISS_INTERVAL, KeyCache
from contactsync.db import Database
from contactsync.ids import hash_api_key
from tests.conftest import make_tenant

FLOOD = 12_000  # more keys than either cache holds
IN_FLIGHT = 400  # requests waiting at once, as from many connections


class Queries:
    """Every statement that looks keys up by their hashes, with its parameters."""

    def __init__(self, db: Database) -> None:
        self.seen: list[str] = []
        self._engine = db.engine

    def __enter__(self) -> Queries:
        event.listen(self._engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)

    def _record(self, _c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "WHERE api_keys.key_hash" in statement:
            values = parameters.values() if isinstance(parameters, dict) else parameters
            self.seen.append(" ".join(str(v) for v in values))

    def naming(self, secret: str) -> int:
        digest = hash_api_key(secret)
        return sum(digest in params for params in self.seen)


def _random_key() -> str:
    return "csk_live_" + secrets.token_urlsafe(30)


def test_a_flood_of_unknown_keys_costs_a_bounded_number_of_queries(db: Database) -> None:
    """...while a cached key never waits, and a key made during the flood works at once."""
    valid = make_tenant(db, "acme").key
    cache = KeyCache(db, ttl=30)
    flood = [_random_key() for _ in range(FLOOD)]
    valid_answers: list[bool] = []

    async def new_key_during_the_flood() -> float:
        await asyncio.sleep(0.2)
        new = await asyncio.to_thread(make_tenant, db, "acme")
        asked = time.monotonic()
        assert await cache.lookup(new.key) is not None
        return time.monotonic() - asked

    async def run() -> tuple[float, float]:
        assert await cache.lookup(valid) is not None  # cached from here on
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(key: str) -> None:
            async with gate:
                assert await cache.lookup(key) is None

        async def keep_using_the_valid_key() -> None:
            while not flooding.done():
                valid_answers.append(await cache.lookup(valid) is not None)
                await asyncio.sleep(0.01)

        started = time.monotonic()
        flooding = asyncio.ensure_future(asyncio.gather(*(one(k) for k in flood)))
        *_, waited = await asyncio.gather(
            flooding, keep_using_the_valid_key(), new_key_during_the_flood()
        )
        elapsed = time.monotonic() - started
        # Seen once: the same keys again cost nothing.
        await asyncio.gather(*(one(k) for k in flood[-5000:]))
        return elapsed, waited

    with Queries(db) as queries:
        elapsed, waited = asyncio.run(run())
    assert waited < 5, waited  # a few query intervals, however long the flood lasts
    assert queries.naming(valid) == 1  # its first lookup only, the flood notwithstanding
    assert valid_answers and all(valid_answers)
    flood_queries = len(queries.seen) - 1  # all but the valid key's first lookup
    assert sum(queries.naming(k) for k in flood[::500]) == len(flood[::500])  # each asked once
    assert flood_queries <= elapsed / MISS_INTERVAL + 3, (flood_queries, elapsed)
    assert flood_queries <= FLOOD // 100, flood_queries

