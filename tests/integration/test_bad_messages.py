"""Bad messages on the queue, read by a real Celery worker: each is refused once, with its
reason in the worker's log; none is retried forever, none stops the worker, pickle never runs."""

from __future__ import annotations

import base64
import pickle
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis

from contactsync import names
from contactsync.ids import new_account_id
from contactsync.queue.wire import build_task_message, queue_list_key, task_message
from contactsync.updates import AcceptedUpdate
from tests.conftest import Stack, make_contact, make_tenant
from tests.e2e.gateways import private_redis
from tests.integration.apply_support import ORIGIN, accepted, contact, dead_letters, push, records
from tests.support import service_env, start_worker, wait_for_worker, wait_until


def message(args: Any, kwargs: dict[str, Any] | None = None, task: str = names.APPLY_TASK) -> bytes:
    """Return a JSON task message with these arguments, as kombu stores it."""
    return build_task_message(
        task_name=task, task_id=str(uuid.uuid4()), args=args, kwargs=kwargs or {},
        queue=names.UPDATES_QUEUE, argsrepr="test", kwargsrepr="{}", origin=ORIGIN,
    )


def task_id(raw: bytes) -> str:
    return str(orjson.loads(raw)["headers"]["id"])


def queued(stack: Stack) -> int:
    """Return the messages waiting or delivered but unacknowledged."""
    return int(stack.redis.llen(queue_list_key(names.UPDATES_QUEUE))) + int(
        stack.redis.hlen("unacked")
    )


def assert_still_working(stack: Stack) -> None:
    """Check the worker applies a good update after the bad ones, and nothing is left queued."""
    tenant = make_tenant(stack.db, f"after-{uuid.uuid4().hex[:6]}")
    contact_id = make_contact(stack.db, tenant.account_id)
    good = accepted(tenant.account_id, contact_id, {"position": "After"})
    push(stack.redis, [good])
    wait_until(lambda: good.update_id in records(stack.db, [good.update_id]), timeout=15)
    assert contact(stack.db, contact_id)["position"] == "After"
    wait_until(lambda: queued(stack) == 0, timeout=10)
    assert stack.worker.popen.poll() is None


def runs_of(stack: Stack, raw: bytes) -> int:
    """Return how many times the worker received this message."""
    return stack.worker.log().count(f"[{task_id(raw)}] received")


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        pytest.param(["upd_x"], {}, "argument is a str, not a list", id="a string, not a list"),
        pytest.param([{"ids": 1}], {}, "argument is a dict", id="an object"),
        pytest.param([[1, None, "../etc", "upd_" + "x" * 300]], {}, "4 malformed update ids",
                     id="malformed ids"),
        pytest.param([], {}, "missing 1 required positional argument", id="no argument"),
        pytest.param([["upd_a"]], {"extra": 1}, "unexpected keyword argument", id="unknown kwarg"),
    ],
)
def test_a_malformed_task_argument_is_refused_once(
    stack: Stack, args: list[Any], kwargs: dict[str, Any], reason: str
) -> None:
    raw = message(args, kwargs)
    stack.redis.lpush(queue_list_key(names.UPDATES_QUEUE), raw)
    wait_until(lambda: reason in stack.worker.log(), timeout=15)
    assert_still_working(stack)
    assert runs_of(stack, raw) == 1  # acknowledged once, never retried


def test_an_unknown_task_is_refused_once(stack: Stack) -> None:
    raw = message([["upd_aaaa"]], task="contactsync.no_such_task")
    stack.redis.lpush(queue_list_key(names.UPDATES_QUEUE), raw)
    wait_until(lambda: "contactsync.no_such_task" in stack.worker.log(), timeout=15)
    assert_still_working(stack)


@pytest.mark.slow  # a worker of its own
def test_a_message_that_is_not_a_task_does_not_stop_the_worker(
    stack: Stack, tmp_path: Path
) -> None:
    # A worker of its own on a Redis of its own: the stack's worker must survive this test.
    with private_redis(tmp_path) as redis_url:
        env = service_env(stack.settings.database_url, redis_url)
        worker = start_worker(env, tmp_path / "worker.log")
        redis = Redis.from_url(redis_url)
        try:
            wait_for_worker(worker)
            envelope = orjson.loads(message([["upd_aaaa"]]))
            key = queue_list_key(names.UPDATES_QUEUE)
            redis.lpush(key, orjson.dumps({**envelope, "body": "!!! not base64 !!!"}))
            redis.lpush(key, b"not even JSON")
            tenant = make_tenant(stack.db, "acme")
            contact_id = make_contact(stack.db, tenant.account_id)
            good = accepted(tenant.account_id, contact_id, {"position": "After"})
            time.sleep(1)
            push(redis, [good])
            wait_until(lambda: good.update_id in records(stack.db, [good.update_id]), timeout=15)
            assert worker.popen.poll() is None
        finally:
            worker.stop()
            redis.close()


class _Trap:
    """Unpickling this creates a file: proof that the worker ran the sender's code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_a_pickled_message_is_refused_and_never_unpickled(stack: Stack, tmp_path: Path) -> None:
    trap = tmp_path / "unpickled"
    envelope = orjson.loads(message([["upd_aaaa"]]))
    body = pickle.dumps(([[_Trap(trap)]], {}, {}))
    envelope["body"] = base64.b64encode(body).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    raw = orjson.dumps(envelope)
    stack.redis.lpush(queue_list_key(names.UPDATES_QUEUE), raw)
    wait_until(lambda: "ContentDisallowed" in stack.worker.log(), timeout=15)
    assert_still_working(stack)
    assert not trap.exists()
    assert "application/x-python-serialize" in stack.worker.log()


def test_unknown_contacts_and_accounts_end_not_found_once(stack: Stack) -> None:
    tenant = make_tenant(stack.db, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    unknown_contact = accepted(tenant.account_id, "cnt_doesnotexist", {"position": "CTO"})
    unknown_account = accepted(new_account_id(), contact_id, {"position": "CTO"})
    raw = push(stack.redis, [unknown_contact, unknown_account])
    ids = [unknown_contact.update_id, unknown_account.update_id]
    found = wait_until(lambda: len(records(stack.db, ids)) == 2 and records(stack.db, ids))
    assert {found[i].status for i in ids} == {"not_found"}
    assert contact(stack.db, contact_id)["position"] is None
    assert_still_working(stack)
    assert runs_of(stack, raw) == 1


def body_of(update: AcceptedUpdate, **changes: Any) -> bytes:
    data = {**asdict(update), **changes}
    return orjson.dumps({k: v for k, v in data.items() if v is not _MISSING})


_MISSING = object()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"seq": _MISSING}, "has no 'seq'", id="missing seq"),
        pytest.param({"account_id": _MISSING}, "has no 'account_id'", id="missing account"),
        pytest.param({"seq": "12"}, "'seq' has the wrong type", id="seq a string"),
        pytest.param({"patch": ["position"]}, "'patch' has the wrong type", id="patch a list"),
        pytest.param({"patch": {"name": None}}, "patch's 'name' has the wrong type",
                     id="name null"),
        pytest.param({"patch": {"tags": "vip"}}, "patch's 'tags' has the wrong type",
                     id="tags a string"),
        pytest.param({"patch": {"custom_fields": {"a": {"b": 1}}}},
                     "patch's 'custom_fields' has the wrong type", id="nested custom field"),
        pytest.param({"patch": {"source": "api"}}, "unknown field ('source')", id="unknown field"),
        pytest.param({"contact_id": "x" * 100}, "contact id is malformed", id="long contact id"),
        pytest.param({"update_id": "upd_" + "x" * 40}, "ids are malformed", id="long update id"),
        pytest.param({"account_id": "acc_x\n"}, "ids are malformed", id="account id newline"),
        pytest.param({"queue": "elsewhere"}, "unknown queue", id="unknown queue"),
        pytest.param({"v": 2}, "unknown fields (v)", id="a newer format"),
    ],
)
def test_a_bad_stored_body_is_refused_with_its_reason_and_others_apply(
    stack: Stack, changes: dict[str, Any], reason: str
) -> None:
    tenant = make_tenant(stack.db, "acme")
    contact_id = make_contact(stack.db, tenant.account_id, position="Intern")
    bad = accepted(tenant.account_id, contact_id, {"company": "Bad"})
    good = accepted(tenant.account_id, contact_id, {"position": "CTO"})
    stack.redis.set(names.update_body_key(bad.update_id), body_of(bad, **changes))
    stack.redis.set(names.update_body_key(good.update_id), good.to_json())
    raw = task_message(names.UPDATES_QUEUE, [bad, good], ORIGIN)
    stack.redis.lpush(queue_list_key(names.UPDATES_QUEUE), raw)
    wait_until(lambda: good.update_id in records(stack.db, [good.update_id]), timeout=15)
    log = stack.worker.log()
    assert reason in log
    assert contact(stack.db, contact_id)["company"] is None
    assert contact(stack.db, contact_id)["position"] == "CTO"
    if isinstance(changes.get("patch"), dict) or "contact_id" in changes:
        # The body says which update it is and whose: recorded `failed` and parked, to be
        # replayed once a worker that takes this patch runs.
        assert f"refusing update {bad.update_id}: " in log
        record = wait_until(lambda: records(stack.db, [bad.update_id]).get(bad.update_id))
        assert record.status == "failed"
        assert record.error is not None and record.error["code"] == "UNREADABLE_UPDATE"
        assert reason in record.error["message"]
        assert bad.update_id in dead_letters(stack.db)
    else:
        assert f"skipping update {bad.update_id}: unreadable body (" in log
        assert bad.update_id not in records(stack.db)  # refused, not half-applied
    assert_still_working(stack)
    assert runs_of(stack, raw) == 1
