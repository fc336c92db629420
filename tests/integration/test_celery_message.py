"""build_task_message matches apply_async's message and runs, with events, on a real worker."""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import celery
import pytest
import redis
from kombu.utils.json import loads as kombu_loads

from contactsync import supervise
from contactsync.queue.wire import build_task_message, queue_list_key

BROKER_URL = "redis://127.0.0.1:6379/13"
QUEUE = "contactsync-message-test"
TASK_NAME = "contactsync.tests.record_call"
RESULT_KEY = "contactsync-message-test:result"
WORKER_MODULE = "contactsync_message_test_worker"
DEADLINE_SECONDS = 20.0

# Values apply_async picks per call or per process; everything else must match exactly.
PER_CALL_HEADERS = frozenset({"origin"})
PER_CALL_PROPERTIES = frozenset({"delivery_tag", "reply_to"})

WORKER_SOURCE = textwrap.dedent(
    '''\
    """Celery app for test_celery_message: record each call's arguments in Redis."""

    import json

    import celery
    import redis

    app = celery.Celery("contactsync_message_test", broker={broker!r})
    app.conf.broker_connection_retry_on_startup = True


    @app.task(name={task!r}, bind=True, ignore_result=True)
    def record_call(self, *args, **kwargs):
        record = {{
            "id": self.request.id,
            "args": args,
            "kwargs": kwargs,
            "argsrepr": self.request.get("argsrepr"),
            "kwargsrepr": self.request.get("kwargsrepr"),
        }}
        client = redis.Redis.from_url({broker!r})
        try:
            client.set({result_key!r}, json.dumps(record))
        finally:
            client.close()
    '''
).format(broker=BROKER_URL, task=TASK_NAME, result_key=RESULT_KEY)


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """Yield a client on the test database, emptied before and after the test."""
    client = redis.Redis.from_url(BROKER_URL, socket_connect_timeout=2, socket_timeout=10)
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        client.close()
        # A CI job that lost its Redis service must not pass by skipping everything.
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {BROKER_URL} is not answering: {exc}")
        pytest.skip(f"Redis at {BROKER_URL} is not answering: {exc}")
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


class WorkerProcess:
    """A `celery worker` subprocess whose output goes to a log file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log_tail(self, lines: int = 60) -> str:
        """Return the end of the worker's log, for failure messages."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def assert_alive(self) -> None:
        """Fail at once, with the log, if the worker has exited."""
        code = self.process.poll()
        if code is not None:
            pytest.fail(f"celery worker exited with {code}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Warm-shut the worker down, killing it if it does not exit in time."""
        supervise.stop([self.process], grace=15)


@pytest.fixture
def celery_worker(tmp_path: Path, redis_db: redis.Redis) -> Iterator[WorkerProcess]:
    """Run a stock Celery worker, with events on, consuming QUEUE from the test database."""
    (tmp_path / f"{WORKER_MODULE}.py").write_text(WORKER_SOURCE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # Warnings-as-errors is this test run's policy, not the worker's.
    env.pop("PYTHONWARNINGS", None)
    log_path = tmp_path / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", WORKER_MODULE, "worker",
        "--pool", "solo", "-Q", QUEUE, "-E",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "INFO", "-n", f"contactsync-message-test-{uuid.uuid4().hex[:8]}@%h",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    worker = WorkerProcess(process, log_path)
    try:
        yield worker
    finally:
        worker.stop()


class EventCapture:
    """Collect Celery events from the broker in a thread, the way Flower listens for them."""

    def __init__(self, app: celery.Celery) -> None:
        self._app = app
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._seen: list[dict[str, Any]] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self._events.put})
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="celery-event-capture", daemon=True)

    def _run(self) -> None:
        try:
            self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # surfaced in the test thread by wait_for
            self._error = exc

    def __enter__(self) -> EventCapture:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._receiver.should_stop = True
        # capture() checks should_stop after each 1 s drain timeout.
        self._thread.join(timeout=10)
        self._connection.release()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], deadline: float
    ) -> dict[str, Any]:
        """Return the first event, seen so far or arriving before the deadline, that matches."""
        for event in self._seen:
            if predicate(event):
                return event
        while time.monotonic() < deadline:
            if self._error is not None:
                raise AssertionError("event receiver failed") from self._error
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            self._seen.append(event)
            if predicate(event):
                return event
        types = sorted({event.get("type", "?") for event in self._seen})
        pytest.fail(f"no matching Celery event before the deadline; saw types {types}")

    def wait_until_listening(self, deadline: float) -> None:
        """Return once the receiver is subscribed, proven by seeing a probe event of our own."""
        # Redis delivers events by pub/sub, which drops events sent before the subscription.
        token = uuid.uuid4().hex
        with self._app.connection_for_write() as connection:
            dispatcher = self._app.events.Dispatcher(connection, enabled=True)
            try:
                while True:
                    dispatcher.send("contactsync-probe", token=token)
                    try:
                        self.wait_for(
                            lambda e: e.get("token") == token, min(deadline, time.monotonic() + 0.5)
                        )
                        return
                    except pytest.fail.Exception:
                        if time.monotonic() >= deadline:
                            raise
            finally:
                dispatcher.close()


def _decode(raw: bytes | str) -> tuple[dict[str, Any], Any]:
    """Parse a stored message and its body as the Redis transport and the worker do."""
    message: dict[str, Any] = kombu_loads(raw)
    assert message["properties"]["body_encoding"] == "base64"
    return message, kombu_loads(base64.b64decode(message["body"]))


def _without(mapping: dict[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key not in keys}


def test_message_matches_apply_async(redis_db: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    args: list[Any] = ["upd_0001", {"name": 'Zoë "Z" O\'Neil', "tags": ["a", "b"], "n": 1.5}]
    kwargs: dict[str, Any] = {"account_id": "acc_1", "dry_run": False, "note": None}

    app = celery.Celery("contactsync-message-reference", broker=BROKER_URL)

    @app.task(name=TASK_NAME, ignore_result=True)
    def record_call(*_args: Any, **_kwargs: Any) -> None:
        """Stand in for the worker's task; never run here."""

    try:
        # No argsrepr/kwargsrepr options: apply_async would copy them into the properties too.
        record_call.apply_async(args=args, kwargs=kwargs, queue=QUEUE, task_id=task_id)
    finally:
        app.close()
    stored = redis_db.lrange(queue_list_key(QUEUE), 0, -1)
    assert len(stored) == 1

    theirs, their_body = _decode(stored[0])
    ours, our_body = _decode(
        build_task_message(
            task_name=TASK_NAME,
            task_id=task_id,
            args=args,
            kwargs=kwargs,
            queue=QUEUE,
            # The caller supplies the reprs; reuse Celery's so the headers compare whole.
            argsrepr=theirs["headers"]["argsrepr"],
            kwargsrepr=theirs["headers"]["kwargsrepr"],
            origin="gateway-1@test",
        )
    )

    assert list(ours) == list(theirs)
    assert _without(ours, frozenset({"body", "headers", "properties"})) == _without(
        theirs, frozenset({"body", "headers", "properties"})
    )
    assert list(ours["headers"]) == list(theirs["headers"])
    assert _without(ours["headers"], PER_CALL_HEADERS) == _without(
        theirs["headers"], PER_CALL_HEADERS
    )
    assert list(ours["properties"]) == list(theirs["properties"])
    assert _without(ours["properties"], PER_CALL_PROPERTIES) == _without(
        theirs["properties"], PER_CALL_PROPERTIES
    )
    assert (
        our_body
        == their_body
        == [args, kwargs, dict.fromkeys(("callbacks", "errbacks", "chain", "chord"))]
    )
    assert ours["headers"]["origin"] == "gateway-1@test"
    delivery_tag = uuid.UUID(ours["properties"]["delivery_tag"])
    assert (delivery_tag.version, str(delivery_tag)) == (4, ours["properties"]["delivery_tag"])


def test_worker_runs_message_and_emits_events(
    celery_worker: WorkerProcess, redis_db: redis.Redis
) -> None:
    task_id = str(uuid.uuid4())
    args: list[Any] = ["upd_0002", {"email": "zoë@example.com", "tags": ["x"], "n": 3, "ok": True}]
    kwargs: dict[str, Any] = {"account_id": "acc_2", "note": None}
    # Deliberately unlike repr(args): the worker must take these from the headers, not recompute.
    argsrepr = "['upd_0002', <contact fields>]"
    kwargsrepr = "{'account_id': 'acc_2', ...}"
    message = build_task_message(
        task_name=TASK_NAME,
        task_id=task_id,
        args=args,
        kwargs=kwargs,
        queue=QUEUE,
        argsrepr=argsrepr,
        kwargsrepr=kwargsrepr,
        origin="gateway-1@test",
    )

    app = celery.Celery("contactsync-message-events", broker=BROKER_URL)
    try:
        with EventCapture(app) as events:
            events.wait_until_listening(time.monotonic() + DEADLINE_SECONDS)
            redis_db.lpush(queue_list_key(QUEUE), message)

            deadline = time.monotonic() + DEADLINE_SECONDS
            raw_record = redis_db.get(RESULT_KEY)
            while raw_record is None and time.monotonic() < deadline:
                celery_worker.assert_alive()
                time.sleep(0.1)
                raw_record = redis_db.get(RESULT_KEY)
            if raw_record is None:
                pytest.fail(f"the worker did not run the task:\n{celery_worker.log_tail()}")

            received = events.wait_for(
                lambda e: e.get("type") == "task-received" and e.get("uuid") == task_id, deadline
            )
            succeeded = events.wait_for(
                lambda e: e.get("type") == "task-succeeded" and e.get("uuid") == task_id, deadline
            )
    finally:
        app.close()

    assert json.loads(raw_record) == {
        "id": task_id,
        "args": args,
        "kwargs": kwargs,
        "argsrepr": argsrepr,
        "kwargsrepr": kwargsrepr,
    }
    # These are the fields Flower shows for the task.
    assert (received["name"], received["args"], received["kwargs"]) == (
        TASK_NAME,
        argsrepr,
        kwargsrepr,
    )
    assert (received["root_id"], received["parent_id"], received["retries"]) == (task_id, None, 0)
    assert succeeded["uuid"] == task_id
    # Acked, not left for a visibility-timeout redelivery.
    assert redis_db.llen(queue_list_key(QUEUE)) == 0
    assert redis_db.hlen("unacked") == 0
