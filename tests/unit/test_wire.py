"""Reading our task messages back (contactsync/queue/wire.py), as the sweeps and the gateway's
backlog sampling do, without Redis."""

from __future__ import annotations

import orjson
import pytest

from contactsync import names
from contactsync.queue.wire import (
    build_task_message,
    priority_lists,
    queue_list_key,
    task_message,
    task_messages,
    unacked_update_ids,
    update_ids,
    updates_in,
)
from contactsync.updates import AcceptedUpdate


def _update(n: int, queue: str = names.UPDATES_QUEUE) -> AcceptedUpdate:
    return AcceptedUpdate(
        update_id=f"upd_{n}", account_id="acc_1", contact_id=f"cnt_{n}", seq=n,
        received_at="2026-01-01T00:00:00.000000Z", patch={"email": "a@example.com"}, queue=queue,
    )


def test_an_apply_message_names_its_updates_queued_or_unacknowledged() -> None:
    message = task_message(names.UPDATES_QUEUE, [_update(1), _update(2)], "test")
    assert update_ids(message) == ["upd_1", "upd_2"]
    assert updates_in(message) == 2
    # kombu's `unacked` entry: [message, exchange, routing key].
    entry = orjson.dumps([orjson.loads(message), "", names.UPDATES_QUEUE])
    assert unacked_update_ids(entry) == ["upd_1", "upd_2"]


def test_another_tasks_message_names_no_update() -> None:
    other = build_task_message(
        task_name="something.else", task_id="t-1", args=[["upd_1"]], kwargs={},
        queue=names.UPDATES_QUEUE, argsrepr="", kwargsrepr="", origin="test",
    )
    assert update_ids(other) == []
    assert updates_in(other) == 1


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"{}", b'{"body": "!!"}', b"null"])
def test_a_message_that_cannot_be_read_names_nothing_and_counts_one(raw: bytes) -> None:
    assert update_ids(raw) == []
    assert unacked_update_ids(raw) == []
    assert updates_in(raw) == 1


def test_messages_are_split_by_queue_and_batch() -> None:
    updates = [_update(1), _update(2, names.BULK_QUEUE), _update(3), _update(4)]
    messages = task_messages(updates, 2, "test")
    assert [(q, update_ids(m)) for q, m in messages] == [
        (names.UPDATES_QUEUE, ["upd_1", "upd_3"]),
        (names.UPDATES_QUEUE, ["upd_4"]),
        (names.BULK_QUEUE, ["upd_2"]),
    ]


def test_priority_lists_start_with_the_plain_queue_list() -> None:
    lists = priority_lists(names.UPDATES_QUEUE)
    assert lists[0] == queue_list_key(names.UPDATES_QUEUE) and len(lists) == 4
