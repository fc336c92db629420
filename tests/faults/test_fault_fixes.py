"""Regression tests of what the fault scenarios found broken; each failed before its fix."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time

import orjson
import pytest
from kombu.transport.redis import Channel as KombuChannel
from redis.asyncio import Redis as AsyncRedis

from bench.faults.services import Stack, Tenant
from contactsync import names
from contactsync.batch_apply import apply_batch
from contactsync.db import Database
from contactsync.models import Contact, OutboxEvent
from contactsync.queue.accept import Enqueuer, Idempotency, Submission
from contactsync.queue.requeue import requeue_orphans
from contactsync.queue.wire import task_message
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from tasks.relay import run_relay
from tests.faults.reads import put_async, row_locked, status_of
from tests.integration.apply_support import ORIGIN, accepted, push
from tests.support import free_port, wait_until
from worker.app import transport_options

pytestmark = pytest.mark.slow  # a fault stack of its own

VISIBILITY = 10  # CONTACTSYNC_VISIBILITY_TIMEOUT_SECONDS of every fault stack


def wait_received(stack: Stack, worker: str, message: bytes, timeout: float = 30) -> None:
    task_id = orjson.loads(message)["headers"]["id"]
    log = stack.workers[worker]
    wait_until(lambda: f"[{task_id}] received" in log.log(), timeout=timeout, interval=0.02)


def test_a_killed_workers_message_is_back_soon_after_the_visibility_timeout(
    fault_stack: Stack, faults_db: Database, tenant: Tenant
) -> None:
    # Before the fix, kombu swept for expired unacked messages every 100 s (10 s interval,
    # every 10th call): a worker restarted at once found them not yet expired, and they sat
    # there for up to 100 s more, whatever the visibility timeout.
    stack = fault_stack
    stack.start_worker("w1")
    stack.wait_workers()
    contact_id = tenant.contact_ids[0]
    update = accepted(tenant.account_id, contact_id, {"position": "CTO"})
    redis = stack.client()
    try:
        with row_locked(faults_db, contact_id):
            message = push(redis, [update])
            wait_received(stack, "w1", message)
            stack.kill_worker("w1")  # mid-task: the message is unacknowledged
            killed_at = time.monotonic()
        assert redis.hlen("unacked") == 1
        stack.start_worker("w1")  # a supervisor restarts it at once
        stack.wait_workers()
        started_after = time.monotonic() - killed_at  # a loaded machine starts it slowly
        wait_until(lambda: status_of(faults_db, update.update_id) == "applied",
                   timeout=VISIBILITY + 20, interval=0.1)
        assert time.monotonic() - killed_at < max(VISIBILITY, started_after) + 8
        wait_until(lambda: redis.hlen("unacked") == 0, timeout=5)  # acknowledged after commit
    finally:
        redis.close()


def test_a_message_lost_between_brpop_and_hset_is_queued_again(
    fault_stack: Stack, faults_db: Database, tenant: Tenant
) -> None:
    # kombu's Redis transport takes a message off its queue (BRPOP), then records it as
    # unacknowledged (HSET): a worker killed between the two takes the message with it, and
    # nothing would ever bring it back. Here the test itself pops the message, as that worker
    # would, then a worker starts.
    stack = fault_stack
    base_url = stack.start_gateway("g1")
    stack.wait_gateways()
    update_id = put_async(base_url, tenant.key, tenant.contact_ids[0], {"position": "CTO"})
    redis = stack.client()
    try:
        assert redis.rpop(names.UPDATES_QUEUE) is not None  # the dying worker's BRPOP
        assert redis.llen(names.UPDATES_QUEUE) == 0 and redis.hlen("unacked") == 0
        stack.start_worker("w1")
        wait_until(lambda: status_of(faults_db, update_id) == "applied",
                   timeout=VISIBILITY + 25, interval=0.2)
        wait_until(lambda: redis.zscore(names.PENDING_KEY, update_id) is None, timeout=5)
        assert redis.get(names.update_body_key(update_id)) is None
    finally:
        redis.close()
    with faults_db.reading() as session:
        contact = session.get(Contact, tenant.contact_ids[0])
        assert contact is not None and contact.position == "CTO"


def test_only_pending_updates_no_message_names_are_queued_again(
    fault_stack: Stack, tenant: Tenant
) -> None:
    contact_id = tenant.contact_ids[0]
    queued, held, lost, finished = (
        accepted(tenant.account_id, contact_id, {"company": name})
        for name in ("queued", "held", "lost", "finished")
    )
    redis = fault_stack.client()
    try:
        for update in (queued, held, lost):
            redis.set(names.update_body_key(update.update_id), update.to_json())
        redis.zadd(names.PENDING_KEY, {u.update_id: u.seq for u in (queued, held, lost, finished)})
        redis.lpush(names.UPDATES_QUEUE, task_message(names.UPDATES_QUEUE, [queued], ORIGIN))
        in_worker = orjson.loads(task_message(names.UPDATES_QUEUE, [held], ORIGIN))
        redis.hset("unacked", "tag-1", orjson.dumps([in_worker, "", names.UPDATES_QUEUE]))

        # A backlog (here: over one message) is left alone: its updates are likely queued.
        assert requeue_orphans(redis, older_than_seconds=0, origin=ORIGIN, max_scan=1) == []
        assert requeue_orphans(redis, older_than_seconds=0, origin=ORIGIN) == [lost.update_id]
        messages = redis.lrange(names.UPDATES_QUEUE, 0, -1)
        assert len(messages) == 2
        args = orjson.loads(base64.b64decode(orjson.loads(messages[0])["body"]))[0]
        assert args == [[lost.update_id]]
        assert redis.zscore(names.PENDING_KEY, finished.update_id) is None
        pending: list[bytes] = redis.zrange(names.PENDING_KEY, 0, -1)  # type: ignore[assignment]
        assert {m.decode() for m in pending} == {
            queued.update_id, held.update_id, lost.update_id
        }
        # Queued again, it is named by a message: the next sweep leaves it alone.
        assert requeue_orphans(redis, older_than_seconds=0, origin=ORIGIN) == []
        # Queued again, it counts as pending from now on: its message is not yet overdue.
        redis.delete(names.UPDATES_QUEUE)
        redis.zrem(names.PENDING_KEY, queued.update_id)
        assert requeue_orphans(redis, older_than_seconds=3600, origin=ORIGIN) == []
        assert requeue_orphans(redis, older_than_seconds=0, origin=ORIGIN) == [lost.update_id]
    finally:
        redis.close()


def test_an_update_whose_retry_could_not_be_queued_is_still_applied(
    fault_stack: Stack, faults_db: Database, tenant: Tenant
) -> None:
    # A transient failure makes the task publish its retry. When Redis refuses that write yet
    # takes the acknowledgement (a delete), Celery raises Reject(requeue=False) and the message
    # is gone: the update stays pending with no message to carry it. Redis refuses here by ACL
    # (the worker's user loses LPUSH/RPUSH for a moment); in the field, a broker that is back
    # between the failed publish and the acknowledgement does the same.
    stack = fault_stack
    base_url = stack.start_gateway("g1")
    redis = stack.client()
    redis.acl_setuser("worker", enabled=True, passwords=["+faults"], keys=["*"],
                      channels=["*"], commands=["+@all"])
    worker_url = stack.redis.url.replace("redis://", "redis://worker:faults@")
    stack.start_worker("w1", redis_url=worker_url)
    stack.wait_gateways()
    stack.wait_workers()
    contact_id = tenant.contact_ids[0]
    try:
        with row_locked(faults_db, contact_id):  # the apply waits, then times out: a retry
            update_id = put_async(base_url, tenant.key, contact_id, {"position": "CTO"})
            wait_until(lambda: redis.hlen("unacked") == 1, timeout=15, interval=0.02)
            redis.acl_setuser("worker", enabled=True, commands=["-lpush", "-rpush"])
            try:
                wait_until(lambda: "reject requeue=False" in stack.workers["w1"].log(),
                           timeout=15)
                wait_until(lambda: redis.hlen("unacked") == 0, timeout=5)
                assert redis.llen(names.UPDATES_QUEUE) == 0  # no retry message anywhere
            finally:
                redis.acl_setuser("worker", enabled=True, commands=["+lpush", "+rpush"])
        assert status_of(faults_db, update_id) is None
        wait_until(lambda: status_of(faults_db, update_id) == "applied",
                   timeout=VISIBILITY + 20, interval=0.2)
    finally:
        redis.close()


def test_a_custom_field_changing_between_1_and_true_is_stored(
    faults_db: Database, tenant: Tenant
) -> None:
    # JSON tells 1 from true and 0 from false, and so does the merge rule; Python's == does
    # not, and SQLAlchemy decides with it whether a JSON column changed at all: the new value
    # was reported (event, changed_fields) and its sequence recorded, but never written.
    contact_id = tenant.contact_ids[0]
    steps: list[dict[str, object]] = [
        {"owner": True, "vip": 0}, {"owner": 1, "vip": False}, {"owner": True, "vip": 0.0},
    ]
    for step in steps:
        update = accepted(tenant.account_id, contact_id, {"custom_fields": step})
        with faults_db.unit_of_work() as session:
            (outcome,) = apply_batch(session, [update], utcnow())
        assert outcome.status == "applied"
        with faults_db.reading() as session:
            row = session.get(Contact, contact_id)
            assert row is not None
            assert orjson.dumps(row.custom_fields, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
                step, option=orjson.OPT_SORT_KEYS
            )


def test_an_accepted_update_keeps_its_2xx_when_redis_fails_right_after(
    fault_stack: Stack,
) -> None:
    # The gateway stores the answer under the Idempotency-Key after the update is queued. If
    # Redis went away in between, that step raised, and the client got 503 for an update that
    # was accepted and will be applied: a client retrying it would then apply it twice.
    async def scenario() -> None:
        redis = AsyncRedis.from_url(fault_stack.redis.url, socket_connect_timeout=1)
        enqueuer = Enqueuer(redis, idempotency_ttl=60, max_batch=10, origin=ORIGIN)
        idem = Idempotency.of("key-1", "PUT", "/external/v1/contacts/cnt_a", {"company": "A"})
        submission = Submission(
            update_id="upd_faults0001", account_id="acc_faults", contact_id="cnt_a",
            patch={"company": "A"}, queue=names.UPDATES_QUEUE, idempotency=idem,
        )
        try:
            await enqueuer.accept([submission])
            fault_stack.redis.kill()
            started = time.monotonic()
            await enqueuer.finish_idempotency("acc_faults", idem, "upd_faults0001", {})
            assert time.monotonic() - started < 10
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_a_relay_facing_a_dead_redis_backs_off_instead_of_flooding_the_log(
    faults_database_url: str, faults_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # Every failed pass logged a full traceback and opened a database transaction again after
    # `relay_interval_seconds` (0.2 s): five tracebacks a second per worker while Redis is down.
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with faults_db.unit_of_work() as session:  # an event waiting to be published
        session.add(OutboxEvent(event_id="evt_faults", payload="{}", created_at=utcnow()))
    settings = Settings(database_url=faults_database_url, redis_url=dead_redis)
    stop = threading.Event()
    relay = threading.Thread(target=run_relay, args=(settings, stop), daemon=True)
    with caplog.at_level(logging.WARNING, logger="contactsync.relay"):
        relay.start()
        time.sleep(4)
        stop.set()
        relay.join(30)
    failed = [r for r in caplog.records if r.getMessage().startswith("relay pass failed")]
    assert 1 <= len(failed) <= 6
    assert len([r for r in failed if r.exc_info]) == 1  # the traceback once, then one line


def test_a_sweep_lock_left_by_a_killed_worker_does_not_hold_back_restores(
    fault_stack: Stack, faults_db: Database, tenant: Tenant
) -> None:
    # kombu takes a lock key (`unacked_mutex`) for each sweep, with a 300 s expiry by default:
    # a worker killed during a sweep left it behind, and no worker restored anything for five
    # minutes. (Seen in the worker-SIGKILL scenario; sweeping often makes it likelier.)
    stack = fault_stack
    update = accepted(tenant.account_id, tenant.contact_ids[0], {"position": "CTO"})
    redis = stack.client()
    try:
        # What the killed worker left: the update's message unacknowledged for a minute, and
        # the sweep lock it held.
        redis.set(names.update_body_key(update.update_id), update.to_json())
        message = orjson.loads(task_message(names.UPDATES_QUEUE, [update], ORIGIN))
        tag = message["properties"]["delivery_tag"]
        redis.hset("unacked", tag, orjson.dumps([message, "", names.UPDATES_QUEUE]))
        redis.zadd("unacked_index", {tag: time.time() - 60})
        options = transport_options(Settings(visibility_timeout_seconds=VISIBILITY))
        expire = options.get("unacked_mutex_expire", KombuChannel.unacked_mutex_expire)
        redis.set("unacked_mutex", "held-by-the-dead-worker", ex=int(str(expire)))
        stack.start_worker("w1")
        wait_until(lambda: status_of(faults_db, update.update_id) == "applied",
                   timeout=VISIBILITY + 20, interval=0.2)
    finally:
        redis.close()


def test_a_worker_holding_messages_survives_redis_dying_under_it(
    fault_stack: Stack, faults_db: Database, tenant: Tenant
) -> None:
    # Celery 5.7 collects the connection it lost and then closes its channel, which restores
    # the messages the worker holds; tasks still running acknowledge on that channel later.
    # Both need a client the channel can no longer make: kombu raised AttributeError and the
    # worker stopped for good ("Unrecoverable error"), with no one to restart it.
    stack = fault_stack
    base_url = stack.start_gateway("g1")
    stack.start_worker("w1")
    stack.wait_gateways()
    stack.wait_workers()
    contact_id = tenant.contact_ids[0]
    redis = stack.client()
    try:
        with row_locked(faults_db, contact_id):  # two pool processes wait inside tasks
            ids = [put_async(base_url, tenant.key, contact_id, {"company": f"C{i}"})
                   for i in range(3)]
            wait_until(lambda: redis.hlen("unacked") == 3, timeout=15, interval=0.05)
            time.sleep(0.3)
            stack.redis.kill()
        time.sleep(1.5)  # the tasks finish, and acknowledge, while Redis is down
        stack.redis.start()

        def all_finished() -> bool:
            return all(status_of(faults_db, u) in ("applied", "noop") for u in ids)

        wait_until(all_finished, timeout=VISIBILITY + 25, interval=0.2)
        assert stack.workers["w1"].popen.poll() is None  # still running: it reconnected
    finally:
        redis.close()


def test_a_message_caught_mid_delivery_is_not_taken_for_lost(
    fault_stack: Stack, tenant: Tenant
) -> None:
    # Between kombu's BRPOP and its HSET a message is in neither place for a few milliseconds;
    # under load a sweep often looks right then, and queued a second copy of a message that
    # was on its way (seen in the long run: many "lost" updates, each then applied twice).
    update = accepted(tenant.account_id, tenant.contact_ids[0], {"company": "A"})
    redis = fault_stack.client()
    try:
        redis.set(names.update_body_key(update.update_id), update.to_json())
        redis.zadd(names.PENDING_KEY, {update.update_id: update.seq})
        message = orjson.loads(task_message(names.UPDATES_QUEUE, [update], ORIGIN))

        def deliver() -> None:  # the worker's HSET, a moment after its BRPOP
            time.sleep(0.2)
            redis.hset("unacked", "tag-1", orjson.dumps([message, "", names.UPDATES_QUEUE]))

        worker = threading.Thread(target=deliver)
        worker.start()
        try:
            found = requeue_orphans(redis, older_than_seconds=0, origin=ORIGIN,
                                    recheck_seconds=1.0)
        finally:
            worker.join()
        assert found == []
        assert redis.llen(names.UPDATES_QUEUE) == 0
    finally:
        redis.close()
