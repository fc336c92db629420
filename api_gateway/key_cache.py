"""Key look-ups for the gateway: valid keys served from memory, unknown keys kept cheap.

A key the process does not hold is looked up in the database by its hash. Keys that wait for
a look-up are looked up together, one query at a time per process, and after a query that
met an unknown key the next one starts no sooner than `MISS_INTERVAL` after it. A flood of
made-up keys therefore costs each gateway process at most 1 / `MISS_INTERVAL` queries a second
of up to `BATCH` hashes each, however many requests carry them; yet every key is still looked
up, a key made a moment ago included, within a few intervals: none is refused unseen. (A bucket
of look-ups, refusing keys beyond it, would refuse a new valid key for as long as a flood
lasts.) Found keys and unknown keys are cached apart, each bounded and for the same `ttl`, so
misses never evict a valid key, and a key created after a miss works within `ttl` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from itertools import islice

from starlette.concurrency import run_in_threadpool

from api_gateway.http_metrics import KEY_LOOKUP_QUERIES, KEY_LOOKUPS
from contactsync.db import Database
from contactsync.errors import ServiceUnavailable
from contactsync.ids import hash_api_key
from contactsync.keys import Principal, find_keys

MISS_INTERVAL = 0.05  # at most 20 queries a second for keys that turn out unknown
BATCH = 500  # hashes in one query (SQLite allows far more bound values; PostgreSQL too)
MAX_WAITING = 10_000  # keys waiting for a look-up; beyond it, 503 until the queue drains
MAX_CACHED = 10_000  # entries in each cache, the oldest dropped first


class KeyCache:
    """Key look-ups by hash, trusted for `ttl` seconds so the hot path skips the database.

    A revoked key is refused by every gateway process within `ttl` seconds.
    """

    def __init__(self, db: Database, ttl: float) -> None:
        self._db = db
        self._ttl = ttl
        self._known: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._queued: OrderedDict[str, None] = OrderedDict()  # digests not yet asked about
        self._answers: dict[str, asyncio.Future[Principal | None]] = {}  # queued or asked
        self._looking: asyncio.Task[None] | None = None

    async def lookup(self, secret: str) -> Principal | None:
        digest = hash_api_key(secret)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[0] > now:
            return known[1]
        if self._unknown.get(digest, 0.0) > now:
            return None
        answer = self._answers.get(digest)
        if answer is None:
            if len(self._answers) >= MAX_WAITING:
                raise ServiceUnavailable("Too many API keys are waiting to be checked.")
            answer = self._answers[digest] = asyncio.get_running_loop().create_future()
            self._queued[digest] = None
            if known is not None:  # a valid key whose entry ran out goes ahead of a flood
                self._queued.move_to_end(digest, last=False)
            if self._looking is None:
                self._looking = asyncio.create_task(self._look_up_queued())
        return await asyncio.shield(answer)

    async def _look_up_queued(self) -> None:
        try:
            while self._queued:
                started = time.monotonic()
                batch = list(islice(self._queued, BATCH))
                for digest in batch:
                    del self._queued[digest]
                try:
                    found = await run_in_threadpool(self._load, batch)
                except Exception as exc:  # each waiting request answers it (a 503 when down)
                    for digest in batch:
                        answer = self._answers.pop(digest)
                        answer.set_exception(exc)
                        answer.exception()  # retrieved: no "never retrieved" log if all left
                    continue
                self._remember(batch, found)
                if len(found) < len(batch):
                    await asyncio.sleep(started + MISS_INTERVAL - time.monotonic())
        finally:
            self._looking = None

    def _load(self, digests: list[str]) -> dict[str, Principal]:
        KEY_LOOKUP_QUERIES.inc()
        with self._db.reading() as session:
            found = find_keys(session, digests)
        KEY_LOOKUPS.labels("found").inc(len(found))
        KEY_LOOKUPS.labels("unknown").inc(len(digests) - len(found))
        return found

    def _remember(self, digests: list[str], found: dict[str, Principal]) -> None:
        until = time.monotonic() + self._ttl
        for digest in digests:
            principal = found.get(digest)
            self._answers.pop(digest).set_result(principal)
            if self._ttl <= 0:
                continue
            self._known.pop(digest, None)
            self._unknown.pop(digest, None)
            if principal is not None:
                self._known[digest] = (until, principal)
            else:
                self._unknown[digest] = until
        for cache in (self._known, self._unknown):
            while len(cache) > MAX_CACHED:
                cache.popitem(last=False)
