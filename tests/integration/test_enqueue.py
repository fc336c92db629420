"""One flush, one script call (contactsync/queue/accept.lua), against a real Redis."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from contactsync import names
from contactsync.queue.accept import (
    Accepted,
    AcceptOutcome,
    BacklogRefused,
    Enqueuer,
    Idempotency,
    RateLimit,
    RateRefused,
    Replayed,
    Submission,
)
from contactsync.queue.wire import queue_list_key
from contactsync.settings import Settings
from contactsync.updates import AcceptedUpdate

# A queue no worker reads: a session's workers may be running on this Redis.
QUEUE = "tests.enqueue"


def _empty(redis: Redis) -> None:
    keys = [*redis.scan_iter("contactsync:*"), queue_list_key(QUEUE)]
    if keys:
        redis.delete(*keys)


@pytest.fixture
def redis(redis_client: Redis) -> Iterator[Redis]:
    """Redis with no contactsync keys before the test, nor after (no worker runs here)."""
    _empty(redis_client)
    yield redis_client
    _empty(redis_client)


def _submission(n: int, key: str | None = None) -> Submission:
    patch = {"company": f"C{n}", "custom_fields": {"quote": 'say "hi"'}}
    return Submission(
        update_id=f"upd_enqueue{n:04d}", account_id="acc_enqueue", contact_id=f"cnt_{n}",
        patch=patch, queue=QUEUE,
        idempotency=Idempotency.of(key, "PUT", f"/external/v1/contacts/cnt_{n}", patch)
        if key else None,
    )


def _accept(settings: Settings, submissions: list[Submission]) -> list[AcceptOutcome]:
    async def run() -> list[AcceptOutcome]:
        redis = AsyncRedis.from_url(settings.redis_url)
        try:
            enqueuer = Enqueuer(redis, idempotency_ttl=60, max_batch=200, origin="tests")
            return await enqueuer.accept(submissions)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _queued_ids(redis: Redis) -> list[list[str]]:
    messages = redis.lrange(queue_list_key(QUEUE), 0, -1)
    return [orjson.loads(base64.b64decode(orjson.loads(m)["body"]))[0][0] for m in messages]


def test_a_stored_body_is_the_update_with_its_sequence(
    settings: Settings, redis: Redis
) -> None:
    outcomes = _accept(settings, [_submission(1), _submission(2)])
    updates = [o.update for o in outcomes if isinstance(o, Accepted)]
    assert [u.seq for u in updates] == [updates[0].seq, updates[0].seq + 1]
    for update in updates:
        stored = redis.get(names.update_body_key(update.update_id))
        assert stored is not None
        assert AcceptedUpdate.from_json(stored) == update
        assert stored == update.to_json()
        assert redis.zscore(names.PENDING_KEY, update.update_id) == update.seq
    assert _queued_ids(redis) == [[u.update_id for u in updates]]


def test_a_flush_past_one_chunk_of_writes_stores_every_update(
    settings: Settings, redis: Redis
) -> None:
    # The script writes bodies and pending entries 1,000 at a time (Lua's stack): 2,501
    # updates of two accounts take three chunks each, the last one partly filled.
    submissions = [replace(_submission(n), account_id=f"acc_enqueue{n % 2}")
                   for n in range(2501)]
    outcomes = _accept(settings, submissions)
    updates = [o.update for o in outcomes if isinstance(o, Accepted)]
    assert len(updates) == 2501
    for update in (updates[0], updates[1000], updates[2000], updates[2500]):
        assert redis.get(names.update_body_key(update.update_id)) == update.to_json()
        assert redis.zscore(names.PENDING_KEY, update.update_id) == update.seq
        owner = names.account_pending_key(update.account_id)
        assert redis.zscore(owner, update.update_id) == update.seq
    assert redis.zcard(names.PENDING_KEY) == 2501
    assert redis.zcard(names.account_pending_key("acc_enqueue0")) == 1251


def test_a_flush_answers_a_known_idempotency_key_and_queues_only_the_others(
    settings: Settings, redis: Redis
) -> None:
    (first,) = _accept(settings, [_submission(1, key="known")])
    assert isinstance(first, Accepted)
    outcomes = _accept(settings, [
        _submission(2, key="new"), _submission(3, key="known"), _submission(4),
    ])
    assert [type(o) for o in outcomes] == [Accepted, Replayed, Accepted]
    replayed = outcomes[1]
    assert isinstance(replayed, Replayed)
    assert replayed.record["update_id"] == first.update.update_id
    assert redis.get(names.update_body_key("upd_enqueue0003")) is None
    assert redis.zscore(names.PENDING_KEY, "upd_enqueue0003") is None
    queued = _queued_ids(redis)
    assert sorted(queued) == sorted([["upd_enqueue0001"], ["upd_enqueue0002", "upd_enqueue0004"]])
    # The new key is reserved for its own update.
    digest = Idempotency.of("new", "PUT", "/", {}).key_digest
    record = redis.get(names.idempotency_key("acc_enqueue", digest))
    assert record is not None and orjson.loads(record)["update_id"] == "upd_enqueue0002"


def test_a_flush_spends_rate_limit_tokens_and_queues_nothing_a_bucket_refused(
    settings: Settings, redis: Redis
) -> None:
    bucket = RateLimit("contactsync:ratelimit:tests-enqueue", rate=1, burst=2)
    limited = [replace(_submission(n), rate_limit=bucket) for n in (1, 2, 3)]
    outcomes = _accept(settings, [limited[0], _submission(4), limited[1], limited[2]])
    assert [type(o) for o in outcomes] == [Accepted, Accepted, Accepted, RateRefused]
    first, unlimited, second, refused = outcomes
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert first.bucket is not None and first.bucket.remaining == 1
    assert second.bucket is not None and second.bucket.remaining == 0
    assert isinstance(unlimited, Accepted) and unlimited.bucket is None
    assert isinstance(refused, RateRefused) and not refused.bucket.allowed
    assert 0 < refused.bucket.wait_us <= 1_000_000
    assert redis.get(names.update_body_key("upd_enqueue0003")) is None
    assert sorted(_queued_ids(redis)[0]) == [
        "upd_enqueue0001", "upd_enqueue0002", "upd_enqueue0004",
    ]
    # The bucket was written once, after the flush went through: empty now.
    (again,) = _accept(settings, [replace(_submission(5), rate_limit=bucket)])
    assert isinstance(again, RateRefused)


def test_one_idempotency_key_twice_in_a_flush_queues_one_update(
    settings: Settings, redis: Redis
) -> None:
    retry = replace(_submission(1, key="twice"), update_id="upd_enqueue0009")  # a client's retry
    outcomes = _accept(settings, [_submission(1, key="twice"), retry])
    first, second = outcomes
    assert isinstance(first, Accepted)
    assert isinstance(second, Replayed)  # the route answers 409: still in flight
    assert second.record["update_id"] == first.update.update_id
    assert second.record["response"] is None
    assert _queued_ids(redis) == [[first.update.update_id]]


def _batch(first: int, size: int, key: str | None, batch_id: str) -> list[Submission]:
    """A batch's submissions as a batch route hands them over: the key on the first only."""
    return [
        replace(_submission(n), batch_id=batch_id,
                idempotency=Idempotency.of(key, "POST", "/batch", {}) if key and n == first
                else None)
        for n in range(first, first + size)
    ]


def test_a_batch_key_is_reserved_with_its_batch_and_a_racing_twin_queues_nothing(
    settings: Settings, redis: Redis
) -> None:
    # Two gateways' requests with one key racing into the same flush: the second finds the
    # first in flight, and none of its items is queued.
    batch, twin = _batch(1, 3, "batch", "b1"), _batch(11, 3, "batch", "b2")
    outcomes = _accept(settings, [*batch, _submission(7), *twin])
    assert [type(o) for o in outcomes] == [Accepted] * 4 + [Replayed] * 3
    assert all(o.record["update_id"] == "upd_enqueue0001" and o.record["response"] is None
               for o in outcomes[4:] if isinstance(o, Replayed))
    assert sorted(_queued_ids(redis)[0]) == [
        "upd_enqueue0001", "upd_enqueue0002", "upd_enqueue0003", "upd_enqueue0007",
    ]
    assert redis.get(names.update_body_key("upd_enqueue0012")) is None
    # Later, the key's batch is answered from its record alone, whole.
    again = _accept(settings, _batch(21, 3, "batch", "b3"))
    assert [type(o) for o in again] == [Replayed] * 3
    assert redis.get(names.update_body_key("upd_enqueue0021")) is None


def test_a_batch_refused_for_its_accounts_backlog_leaves_its_key_free(
    settings: Settings, redis: Redis
) -> None:
    async def run(limit: int) -> list[AcceptOutcome]:
        client = AsyncRedis.from_url(settings.redis_url)
        try:
            enqueuer = Enqueuer(client, idempotency_ttl=60, max_batch=200, origin="tests",
                                account_limit=lambda: limit)
            return await enqueuer.accept(_batch(1, 3, "refused", "b1"))
        finally:
            await client.aclose()

    assert [type(o) for o in asyncio.run(run(2))] == [BacklogRefused] * 3
    assert not redis.keys(names.idempotency_key("acc_enqueue", "*"))
    assert [type(o) for o in asyncio.run(run(3))] == [Accepted] * 3
