"""A dead worker's messages come back within seconds; a live, slow one keeps its own.

Real workers with the default settings (a visibility timeout of 300 s), on a Redis database of
their own so that the session's worker takes nothing. Worker A's pool process is stopped
(SIGSTOP) before the message arrives: A's main process takes the message and holds it, as it
would while a task waits on a slow database, and nothing else can run it. Only then does
worker B start, so that B cannot have taken it first.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from redis import Redis

from contactsync import names, scripts
from contactsync.db import Database
from contactsync.settings import Settings
from contactsync.updates import AcceptedUpdate
from tests.conftest import REDIS_DB, make_contact, make_tenant
from tests.integration.apply_support import accepted, push, records
from tests.integration.test_worker import pool_children
from tests.support import Process, service_env, start_worker, wait_for_worker, wait_until

pytestmark = pytest.mark.slow  # workers of its own, killed and stopped

PROMISE_SECONDS = 15  # DESIGN §3: a dead worker's updates are applied within this


@pytest.fixture
def own_redis(redis_base: str, backend: str) -> Iterator[str]:
    url = f"{redis_base}/{REDIS_DB[backend] - 2}"
    client = Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture
def workers(
    db: Database, settings: Settings, own_redis: str, tmp_path: Path
) -> Iterator[dict[str, Process]]:
    started: dict[str, Process] = {}
    yield started
    for process in started.values():
        if process.popen.poll() is None:
            os.killpg(process.popen.pid, signal.SIGCONT)  # a stopped pool process cannot stop
        process.stop()


def start(workers: dict[str, Process], name: str, settings: Settings, redis_url: str,
          log_dir: Path) -> Process:
    env = service_env(settings.database_url, redis_url)
    process = start_worker(env, log_dir / f"{name}.log")
    workers[name] = process
    wait_for_worker(process, timeout=60)
    return process


def held_by(redis: Redis, message: bytes) -> str | None:
    """Return the consumer that claims this message while it sits in `unacked`, if any."""
    tag = orjson.loads(message)["properties"]["delivery_tag"]
    if not redis.hexists("unacked", tag):
        return None
    for consumer in redis.zrange(names.WORKERS_KEY, 0, -1):
        if redis.sismember(names.claims_key(consumer.decode()), tag):
            return str(consumer.decode())
    return None


def task_lines(process: Process, message: bytes, what: str) -> int:
    task_id = orjson.loads(message)["headers"]["id"]
    return process.log().count(f"[{task_id}] {what}")


@dataclass
class Stuck:
    """Worker A, whose pool child is stopped while it holds one update, and worker B."""

    a: Process
    b: Process
    child: int  # A's stopped pool child
    update: AcceptedUpdate
    message: bytes
    holder: str  # A's consumer


def worker_a_stuck_on_one_update(
    db: Database, settings: Settings, own_redis: str, workers: dict[str, Process],
    tmp_path: Path, redis: Redis,
) -> Stuck:
    """Start worker A, stop its pool child, queue one update A takes, then start worker B."""
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id)
    update = accepted(tenant.account_id, contact_id, {"position": "CTO"})
    a = start(workers, "a", settings, own_redis, tmp_path)
    (child,) = pool_children(a.popen.pid)
    os.kill(child, signal.SIGSTOP)
    message = push(redis, [update])
    holder = wait_until(lambda: held_by(redis, message), timeout=15)
    b = start(workers, "b", settings, own_redis, tmp_path)
    return Stuck(a, b, child, update, message, holder)


def test_a_killed_workers_update_is_applied_by_another_within_seconds(
    db: Database, settings: Settings, own_redis: str, workers: dict[str, Process],
    tmp_path: Path,
) -> None:
    redis = Redis.from_url(own_redis)
    stuck = worker_a_stuck_on_one_update(db, settings, own_redis, workers, tmp_path, redis)
    a, b, update, message = stuck.a, stuck.b, stuck.update, stuck.message

    os.killpg(a.popen.pid, signal.SIGKILL)  # main process, pool, relay: all at once
    killed = time.monotonic()
    a.popen.wait(10)
    found = wait_until(lambda: records(db, [update.update_id]).get(update.update_id),
                       timeout=PROMISE_SECONDS + 30)
    took = time.monotonic() - killed
    print(f"\nthe killed worker's update was applied {took:.1f} s after the kill")
    assert found.status == "applied"
    assert took <= PROMISE_SECONDS
    wait_until(lambda: task_lines(b, message, "succeeded") or None, timeout=10)  # logged last
    assert task_lines(b, message, "succeeded") == 1
    assert "queued the 1 message(s) it held again" in b.log()

    def settled() -> bool:  # the dead consumer forgotten, nothing held by anyone
        return (redis.zcard(names.WORKERS_KEY) == 1 and redis.hlen("unacked") == 0
                and not redis.keys(names.CLAIMS_PREFIX + "*"))

    wait_until(lambda: settled() or None, timeout=15)
    redis.close()


def test_a_live_worker_whose_task_takes_long_keeps_its_message(
    db: Database, settings: Settings, own_redis: str, workers: dict[str, Process],
    tmp_path: Path,
) -> None:
    redis = Redis.from_url(own_redis)
    stuck = worker_a_stuck_on_one_update(db, settings, own_redis, workers, tmp_path, redis)
    a, b, update, message, holder = (
        stuck.a, stuck.b, stuck.update, stuck.message, stuck.holder
    )

    # Twice the silence after which a worker is dead: A's task is as slow as a stuck database
    # makes it, but A itself is alive, and B must leave its message alone. (Waiting for
    # something not to happen takes this long.)
    time.sleep(2 * Settings().worker_dead_after_seconds)
    assert held_by(redis, message) == holder
    assert redis.llen(names.UPDATES_QUEUE) == 0
    assert task_lines(b, message, "received") == 0

    os.kill(stuck.child, signal.SIGCONT)
    found = wait_until(lambda: records(db, [update.update_id]).get(update.update_id), timeout=30)
    assert found.status == "applied"
    wait_until(lambda: task_lines(a, message, "succeeded") or None, timeout=10)
    assert task_lines(a, message, "succeeded") == 1
    assert task_lines(b, message, "received") == 0
    redis.close()


def test_a_message_that_vanished_with_a_killed_worker_is_queued_again_within_seconds(
    db: Database, settings: Settings, own_redis: str, workers: dict[str, Process],
    tmp_path: Path,
) -> None:
    # A worker killed between kombu's BRPOP and its bookkeeping (or with the popped message
    # still unread in its socket) leaves no claim and no `unacked` entry: only its heartbeat,
    # going stale, and the update, pending with its body, named by no message.
    redis = Redis.from_url(own_redis)
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id)
    update = accepted(tenant.account_id, contact_id, {"position": "CTO"})
    seconds, micros = redis.time()
    redis.set(names.update_body_key(update.update_id), update.to_json())
    redis.zadd(names.PENDING_KEY, {update.update_id: (seconds - 3) * 1_000_000 + micros})
    redis.zadd(names.WORKERS_KEY, {"gone:1:0": seconds - 3})  # died three seconds ago
    b = start(workers, "b", settings, own_redis, tmp_path)
    found = wait_until(lambda: records(db, [update.update_id]).get(update.update_id),
                       timeout=PROMISE_SECONDS + 30)
    assert found.status == "applied"
    seconds_now = redis.time()[0]
    assert seconds_now - (seconds - 3) <= PROMISE_SECONDS
    assert "their task message was lost with worker consumer gone:1:0" in b.log()
    redis.close()


def test_two_sweepers_queue_a_dead_consumers_message_once(own_redis: str) -> None:
    # Two live workers find the same consumer dead at once: the script runs whole, so the
    # second finds the entry gone. A consumer that has spoken again keeps what it holds.
    redis = Redis.from_url(own_redis)
    restore = redis.register_script(scripts.RESTORE_CLAIM)
    now = redis.time()[0]
    for consumer, beat in (("dead", now - 60), ("back", now)):
        redis.zadd(names.WORKERS_KEY, {consumer: beat})
        redis.sadd(names.claims_key(consumer), f"tag-{consumer}")
        redis.hset("unacked", f"tag-{consumer}", f"entry-{consumer}")
        redis.zadd("unacked_index", {f"tag-{consumer}": now - 60})

    def sweep(consumer: str) -> int:
        return int(restore(
            keys=[names.WORKERS_KEY, "unacked", "unacked_index", names.claims_key(consumer),
                  names.UPDATES_QUEUE],
            args=[consumer, 8, f"tag-{consumer}", f"entry-{consumer}", f"message-{consumer}"],
        ))

    assert [sweep("dead"), sweep("dead")] == [1, 0]
    assert redis.lrange(names.UPDATES_QUEUE, 0, -1) == [b"message-dead"]
    assert not redis.hexists("unacked", "tag-dead")
    assert redis.zscore("unacked_index", "tag-dead") is None
    assert not redis.exists(names.claims_key("dead"))
    assert sweep("back") == 0
    assert redis.hget("unacked", "tag-back") == b"entry-back"
    assert redis.sismember(names.claims_key("back"), "tag-back")
    assert redis.llen(names.UPDATES_QUEUE) == 1
    redis.close()
