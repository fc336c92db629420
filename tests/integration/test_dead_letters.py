"""Dead letters on real databases and Redis: parking, listing, replaying once."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import orjson
import pytest
from redis import Redis
from sqlalchemy.exc import OperationalError

from contactsync import dead_letters as dead
from contactsync.db import Database
from contactsync.names import update_body_key
from contactsync.queue.wire import queue_list_key
from contactsync.timeutil import utcnow
from tests.integration.apply_support import ORIGIN, accepted
from tests.support import wait_blocked

# No worker consumes it, and the `db` fixture drops it (a contactsync:* key) before each test.
QUEUE = "contactsync:test:replays"


@pytest.fixture(autouse=True)
def _drop_replayed(redis_client: Redis) -> Iterator[None]:
    """Drop what replays stored: no worker takes these, and unfinished bodies hold up cleaning."""
    yield
    redis_client.delete(queue_list_key(QUEUE), *redis_client.scan_iter("contactsync:update:*"))


def queued_ids(redis: Redis) -> list[str]:
    """Return the update ids of the task messages waiting in the test queue, oldest first."""
    ids = []
    for raw in reversed(redis.lrange(queue_list_key(QUEUE), 0, -1)):
        args, _, _ = orjson.loads(base64.b64decode(orjson.loads(raw)["body"]))
        ids += args[0]
    return ids


def test_parking_again_keeps_one_pending_letter(db: Database) -> None:
    update = accepted("acc_x", "cnt_x", {"position": "CTO"}, queue=QUEUE)
    with db.unit_of_work() as session:
        dead.park(session, [(update, {"code": "A", "message": "first"})], utcnow())
    with db.unit_of_work() as session:
        (letter,) = dead.pending(session)
        letter.replayed_at = utcnow()
    with db.unit_of_work() as session:
        dead.park(session, [(update, {"code": "B", "message": "again"})], utcnow())
    with db.reading() as session:
        (letter,) = dead.pending(session)
    assert letter.error == {"code": "B", "message": "again"}
    assert letter.body["patch"] == {"position": "CTO"} and letter.queue == QUEUE


def test_replay_queues_the_ids_asked_for_with_their_bodies(
    db: Database, redis_client: Redis
) -> None:
    one, two = (accepted("acc_x", "cnt_x", {"company": n}, queue=QUEUE) for n in "AB")
    error = {"code": "X", "message": "x"}
    with db.unit_of_work() as session:
        dead.park(session, [(one, error), (two, error)], utcnow())
    with db.unit_of_work() as session:
        assert dead.replay(session, redis_client, [two.update_id, "upd_unknown"], ORIGIN) == [
            two.update_id
        ]
    assert queued_ids(redis_client) == [two.update_id]
    assert orjson.loads(redis_client.get(update_body_key(two.update_id)))["patch"] == two.patch
    with db.reading() as session:
        assert [d.update_id for d in dead.pending(session)] == [one.update_id]
    with db.unit_of_work() as session:
        assert dead.replay(session, redis_client, [two.update_id], ORIGIN) == []


def test_concurrent_replays_queue_a_letter_once(db: Database, redis_client: Redis) -> None:
    update = accepted("acc_x", "cnt_x", {"position": "CTO"}, queue=QUEUE)
    with db.unit_of_work() as session:
        dead.park(session, [(update, {"code": "X", "message": "x"})], utcnow())
    second: list[object] = []

    def replay_again() -> None:
        try:
            with db.unit_of_work() as session:
                second.append(dead.replay(session, redis_client, [], ORIGIN))
        except OperationalError as exc:  # SQLite refuses the late writer: nothing queued
            second.append(exc)

    with db.unit_of_work() as session:
        assert dead.replay(session, redis_client, [], ORIGIN) == [update.update_id]
        thread = threading.Thread(target=replay_again)
        thread.start()
        assert thread.native_id is not None
        wait_blocked(db, thread.native_id, thread.is_alive)  # behind this one's commit
    thread.join(40)
    assert len(second) == 1
    assert second[0] == [] or isinstance(second[0], OperationalError)
    assert queued_ids(redis_client) == [update.update_id]

