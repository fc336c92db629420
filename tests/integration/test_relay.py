"""The outbox relay on real databases and Redis: each event once, in order, outbox emptied."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from redis import Redis

from contactsync.batch_apply import apply_batch
from contactsync.db import Database
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from tasks.relay import relay_once
from tests.conftest import make_contact, make_tenant
from tests.integration.apply_support import accepted, outbox_count
from tests.support import wait_until


@pytest.fixture
def relay_dbs(db: Database, settings: Settings) -> Iterator[list[Database]]:
    """Three relays' databases, each taking the write lock up front as the worker's does."""
    databases = [Database(settings) for _ in range(3)]
    yield databases
    for database in databases:
        database.dispose()


def stream_events(redis: Redis, settings: Settings) -> list[dict]:
    return [orjson.loads(f[b"event"]) for _, f in redis.xrange(settings.events_stream)]


def fill_outbox(db: Database, count: int) -> list[str]:
    """Apply `count` changing updates in one transaction; return their update ids in order."""
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id)
    updates = [
        accepted(tenant.account_id, contact_id, {"custom_fields": {"n": n}}) for n in range(count)
    ]
    with db.unit_of_work() as session:
        apply_batch(session, list(reversed(updates)), utcnow())
    return [u.update_id for u in updates]


def wait_published(db: Database, redis: Redis, settings: Settings, count: int) -> list[str]:
    """Wait for an empty outbox and `count` events (a running worker's relay may help)."""
    wait_until(
        lambda: outbox_count(db) == 0 and len(redis.xrange(settings.events_stream)) >= count,
        timeout=10,
    )
    return [e["update_id"] for e in stream_events(redis, settings)]


def test_one_relay_publishes_in_outbox_order_in_batches(
    db: Database, settings: Settings, redis_client: Redis, relay_dbs: list[Database]
) -> None:
    update_ids = fill_outbox(db, 7)
    small = settings.model_copy(update={"relay_batch_size": 3})
    counts = []
    while published := relay_once(relay_dbs[0], redis_client, small):
        counts.append(published)
    assert all(n <= 3 for n in counts)
    assert sorted(wait_published(db, redis_client, settings, 7)) == sorted(update_ids)
    # When the whole suite runs, a stack worker's relay may share the work; alone, this relay
    # publishes in outbox order, batch by batch.
    if sum(counts) == 7:
        assert counts == [3, 3, 1]
        assert wait_published(db, redis_client, settings, 7) == update_ids


def test_concurrent_relays_publish_each_event_once(
    db: Database, settings: Settings, redis_client: Redis, relay_dbs: list[Database]
) -> None:
    update_ids = fill_outbox(db, 40)
    small = settings.model_copy(update={"relay_batch_size": 4})
    start = threading.Barrier(len(relay_dbs))
    errors: list[BaseException] = []

    def drain(database: Database) -> None:
        try:
            start.wait()
            while relay_once(database, redis_client, small):
                pass
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(d,)) for d in relay_dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    published = wait_published(db, redis_client, settings, len(update_ids))
    assert sorted(published) == sorted(update_ids)  # every event, none twice


class _CallSizes(Redis):
    """A real Redis client that notes the payload bytes of each script call it sends."""

    calls: list[int]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        self.calls.append(sum(len(str(a).encode()) for a in keys_and_args[numkeys + 1:]))
        return super().evalsha(sha, numkeys, *keys_and_args)


def test_a_pass_of_large_events_is_split_into_calls_bounded_by_bytes(
    db: Database, settings: Settings, relay_dbs: list[Database]
) -> None:
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id)
    updates = [  # each event holds the old and new value and the contact: about 3 KB
        accepted(tenant.account_id, contact_id, {"custom_fields": {"note": f"{n:03}" + "x" * 990}})
        for n in range(30)
    ]
    with db.unit_of_work() as session:
        apply_batch(session, updates, utcnow())
    bound = 16 * 1024
    small = settings.model_copy(update={"relay_call_max_bytes": bound})
    client = _CallSizes.from_url(settings.redis_url)
    client.calls = []
    try:
        published = 0
        while n := relay_once(relay_dbs[0], client, small):
            published += n
    finally:
        client.close()
    assert max(client.calls, default=0) <= bound, client.calls
    with Redis.from_url(settings.redis_url) as redis:
        ids = wait_published(db, redis, settings, 30)
    assert sorted(ids) == sorted(u.update_id for u in updates)
    # Alone (a stack worker's relay, when the suite runs, may take some): every event in
    # several calls, in outbox order.
    if published == 30:
        assert len(client.calls) >= 30 * 3000 // bound
        assert ids == [u.update_id for u in updates]
