"""Each account's backlog: counted and capped by the accept script, corrected by the relay."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from contactsync import names
from contactsync.queue.accept import Accepted, AcceptOutcome, BacklogRefused, Enqueuer, Submission
from contactsync.queue.wire import queue_list_key
from contactsync.settings import Settings
from tasks import account_backlog

QUEUE = "tests.account-backlog"  # a queue no worker reads


def _empty(redis: Redis) -> None:
    keys = [*redis.scan_iter("contactsync:*"), queue_list_key(QUEUE)]
    if keys:
        redis.delete(*keys)


@pytest.fixture
def redis(redis_client: Redis) -> Iterator[Redis]:
    _empty(redis_client)
    yield redis_client
    _empty(redis_client)


def _submission(account: str, n: int) -> Submission:
    return Submission(update_id=f"upd_{account}{n:04d}", account_id=account,
                      contact_id=f"cnt_{n}", patch={"company": f"C{n}"}, queue=QUEUE)


def _accept(settings: Settings, submissions: list[Submission], limit: int) -> list[AcceptOutcome]:
    async def run() -> list[AcceptOutcome]:
        client = AsyncRedis.from_url(settings.redis_url)
        try:
            enqueuer = Enqueuer(client, idempotency_ttl=60, max_batch=200, origin="tests",
                                account_limit=lambda: limit)
            return await enqueuer.accept(submissions)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_an_account_over_its_limit_is_refused_whole_and_the_others_are_not(
    settings: Settings, redis: Redis
) -> None:
    first = _accept(settings, [_submission("acc_bulk", n) for n in range(4)], limit=5)
    assert all(isinstance(o, Accepted) for o in first)
    # Two more would make 6: both are refused, not one of them; the other account goes in.
    mixed = [_submission("acc_bulk", 10), _submission("acc_one", 1), _submission("acc_bulk", 11)]
    outcomes = _accept(settings, mixed, limit=5)
    assert [type(o) for o in outcomes] == [BacklogRefused, Accepted, BacklogRefused]
    assert redis.zcard(names.account_pending_key("acc_bulk")) == 4
    assert redis.zcard(names.account_pending_key("acc_one")) == 1
    assert redis.zcard(names.PENDING_KEY) == 5
    assert not redis.exists(names.update_body_key("upd_acc_bulk0010"))
    assert {m.decode() for m in redis.smembers(names.BACKLOG_ACCOUNTS_KEY)} == {
        "acc_bulk", "acc_one"}


def test_a_count_left_behind_by_a_dead_worker_is_corrected(
    settings: Settings, redis: Redis
) -> None:
    _accept(settings, [_submission("acc_bulk", n) for n in range(3)], limit=3)
    assert isinstance(_accept(settings, [_submission("acc_bulk", 9)], limit=3)[0], BacklogRefused)
    # A worker finished two updates and died before taking them off their account's count.
    redis.zrem(names.PENDING_KEY, "upd_acc_bulk0000", "upd_acc_bulk0001")
    assert account_backlog.reconcile(redis) == 2
    assert [m.decode() for m in redis.zrange(names.account_pending_key("acc_bulk"), 0, -1)] == [
        "upd_acc_bulk0002"]
    assert isinstance(_accept(settings, [_submission("acc_bulk", 9)], limit=3)[0], Accepted)
    # Once nothing of the account waits, it leaves the registry too.
    redis.delete(names.PENDING_KEY)
    assert account_backlog.reconcile(redis) == 2
    assert not redis.exists(names.account_pending_key("acc_bulk"))
    assert not redis.smembers(names.BACKLOG_ACCOUNTS_KEY)


def test_a_set_of_many_pages_is_corrected_page_by_page(settings: Settings, redis: Redis) -> None:
    waiting = {f"upd_{n:06d}": n for n in range(account_backlog.PAGE * 5 // 2)}
    account_key = names.account_pending_key("acc_bulk")
    redis.zadd(account_key, waiting)
    redis.sadd(names.BACKLOG_ACCOUNTS_KEY, "acc_bulk")
    still = {m: s for m, s in waiting.items() if s % 3 == 0}  # the others finished meanwhile
    redis.zadd(names.PENDING_KEY, still)
    assert account_backlog.reconcile(redis) == len(waiting) - len(still)
    # The members that stay keep their scores (when they were accepted).
    assert redis.zrange(account_key, 0, -1, withscores=True) == [
        (m.encode(), float(s)) for m, s in still.items()]
    assert {m.decode() for m in redis.smembers(names.BACKLOG_ACCOUNTS_KEY)} == {"acc_bulk"}
