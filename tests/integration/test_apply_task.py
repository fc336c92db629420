"""The apply task's logic without Celery: concurrent deliveries of one update."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from redis import Redis

from contactsync.batch_apply import apply_batch
from contactsync.db import Database
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from tasks.applying import BatchResult, apply_with_fallback
from tasks.runtime import Runtime
from tests.conftest import make_contact, make_tenant
from tests.integration.apply_support import (
    accepted,
    commit_fails_once,
    dead_letters,
    records,
)
from tests.support import wait_blocked


@pytest.fixture
def runtime(db: Database, settings: Settings, redis_client: Redis) -> Iterator[Runtime]:
    """A worker's resources: a database that takes the write lock up front, and Redis."""
    database = Database(settings)
    yield Runtime(settings, database, redis_client)
    database.dispose()


def test_a_concurrent_delivery_of_a_not_found_update_does_not_fail_it(
    db: Database, runtime: Runtime
) -> None:
    tenant = make_tenant(db, "acme")
    update = accepted(tenant.account_id, "cnt_missing00000", {"position": "CTO"})
    results: list[BatchResult] = []
    # Nothing locks a contact that does not exist: the second delivery meets the first's
    # record only when inserting its own.
    with runtime.db.unit_of_work() as session:
        (first,) = apply_batch(session, [update], utcnow())
        second = threading.Thread(
            target=lambda: results.append(apply_with_fallback(runtime, [update]))
        )
        second.start()
        assert second.native_id is not None
        wait_blocked(runtime.db, second.native_id, second.is_alive)
    second.join(30)
    (result,) = results
    assert first.status == "not_found"
    assert result.permanent == []
    if result.transient:  # what the task's retry does next
        result = apply_with_fallback(runtime, result.transient)
    assert [(o.status, o.duplicate) for o in result.outcomes] == [("not_found", True)]
    assert records(db)[update.update_id].status == "not_found"
    assert dead_letters(db) == {}


def test_a_commit_that_fails_leaves_its_updates_to_retry_none_finished(
    db: Database, runtime: Runtime, settings: Settings
) -> None:
    if settings.is_sqlite:
        pytest.skip("needs a failure at COMMIT itself: a deferred trigger, PostgreSQL's")
    tenant = make_tenant(db, "acme")
    updates = [
        accepted(tenant.account_id, make_contact(db, tenant.account_id), {"position": "CTO"})
        for _ in range(2)
    ]
    ids = [u.update_id for u in updates]
    with commit_fails_once(db):
        result = apply_with_fallback(runtime, updates)
        # Nothing committed: no outcome may be reported, or the task would drop the bodies.
        assert (result.outcomes, result.transient, result.permanent) == ([], updates, [])
        assert records(db, ids) == {}
        again = apply_with_fallback(runtime, result.transient)  # the task's retry
    assert [o.status for o in again.outcomes] == ["applied", "applied"]
    assert {i: r.status for i, r in records(db, ids).items()} == dict.fromkeys(ids, "applied")


def test_an_identity_taken_by_a_concurrent_transaction_ends_conflict_without_a_retry(
    db: Database, runtime: Runtime
) -> None:
    tenant = make_tenant(db, "acme")
    first_id, second_id = (make_contact(db, tenant.account_id) for _ in range(2))
    first = accepted(tenant.account_id, first_id, {"email": "jane@example.com"})
    second = accepted(tenant.account_id, second_id, {"email": "JANE@example.com"})
    results: list[BatchResult] = []
    # The second looks the identity up before the first commits, and finds it free: only the
    # identity index (PostgreSQL) or the write lock (SQLite) stands between it and a duplicate.
    with runtime.db.unit_of_work() as session:
        (taken,) = apply_batch(session, [first], utcnow())
        racer = threading.Thread(
            target=lambda: results.append(apply_with_fallback(runtime, [second]))
        )
        racer.start()
        assert racer.native_id is not None
        wait_blocked(runtime.db, racer.native_id, racer.is_alive)
    racer.join(30)
    (result,) = results
    assert taken.status == "applied"
    assert result.transient == [] and result.permanent == []
    (outcome,) = result.outcomes
    assert outcome.status == "conflict"
    assert outcome.error is not None
    assert outcome.error["details"] == {"field": "email", "contact_id": first_id}
    assert records(db)[second.update_id].status == "conflict"
    assert dead_letters(db) == {}


def test_a_redelivered_conflict_still_names_the_holder(db: Database) -> None:
    tenant = make_tenant(db, "acme")
    holder = make_contact(db, tenant.account_id, email="jane@example.com")
    other = make_contact(db, tenant.account_id)
    update = accepted(tenant.account_id, other, {"email": "jane@example.com"})
    for _ in range(2):
        with db.unit_of_work() as session:
            (outcome,) = apply_batch(session, [update], utcnow())
        assert outcome.status == "conflict"
        assert outcome.error is not None
        assert outcome.error["details"] == {"field": "email", "contact_id": holder}
    assert outcome.duplicate
