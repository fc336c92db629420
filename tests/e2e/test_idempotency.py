"""Idempotency-Key: same key and body, same answer, applied once (the IETF draft)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from contactsync import names
from contactsync.queue.accept import Idempotency, idempotency_record
from tests.conftest import Stack, make_contact
from tests.e2e.helpers import (
    ASYNC,
    api,
    assert_bad_fields,
    assert_error,
    contact_path,
    get_contact,
    new_tenant,
    settled_events,
    update_records,
)

BODY = {"position": "VP of Engineering", "tags": ["hot-lead", "enterprise"]}


@dataclass
class Seeded:
    key: str
    account_id: str
    contact_id: str

    @property
    def path(self) -> str:
        return contact_path(self.contact_id)


@pytest.fixture
def seeded(stack: Stack) -> Seeded:
    tenant = new_tenant(stack, "acme")
    return Seeded(tenant.key, tenant.account_id, make_contact(stack.db, tenant.account_id))


def _put(
    stack: Stack, key: str, path: str, body: Any, idem: str, *, queued: bool = False
) -> Any:
    headers = {"Idempotency-Key": idem, **(ASYNC if queued else {})}
    return api(stack, key).put(path, json=body, headers=headers)


def _one_event(stack: Stack, update_id: str | None = None) -> dict[str, Any]:
    events = settled_events(stack)
    assert len(events) == 1, events
    if update_id is not None:
        assert events[0]["update_id"] == update_id
    return events[0]


def test_async_retry_gets_the_same_update_and_applies_once(stack: Stack, seeded: Seeded) -> None:
    first = _put(stack, seeded.key, seeded.path, BODY, "retry-1", queued=True)
    again = _put(stack, seeded.key, seeded.path, BODY, "retry-1", queued=True)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.json() == first.json()
    update_id = first.json()["data"]["update_id"]
    for response in (first, again):
        assert response.headers["location"] == f"/external/v1/updates/{update_id}"
        assert response.headers["preference-applied"] == "respond-async"
    assert stack.wait_finished(seeded.key, update_id)["status"] == "applied"
    later = _put(stack, seeded.key, seeded.path, BODY, "retry-1", queued=True)
    assert (later.status_code, later.json()) == (202, first.json())
    assert update_records(stack, seeded.contact_id) == 1
    _one_event(stack, update_id)


def test_default_mode_retry_gets_the_same_answer_and_applies_once(
    stack: Stack, seeded: Seeded
) -> None:
    first = _put(stack, seeded.key, seeded.path, BODY, "retry-2")
    assert first.status_code == 200, first.text
    assert first.json()["data"]["position"] == "VP of Engineering"
    again = _put(stack, seeded.key, seeded.path, BODY, "retry-2")
    assert (again.status_code, again.json()) == (200, first.json())
    # A later change does not alter the stored answer: a retry replays it, not the contact.
    other = api(stack, seeded.key).put(seeded.path, json={"position": "CTO"})
    assert other.status_code == 200, other.text
    replay = _put(stack, seeded.key, seeded.path, BODY, "retry-2")
    assert (replay.status_code, replay.json()) == (200, first.json())
    assert get_contact(stack, seeded.key, seeded.contact_id)["position"] == "CTO"
    assert update_records(stack, seeded.contact_id) == 2
    events = settled_events(stack)
    assert [e["changes"].get("position", {}).get("new") for e in events] == [
        "VP of Engineering", "CTO",
    ]


def test_a_not_found_answer_is_replayed_too(stack: Stack, seeded: Seeded) -> None:
    path = contact_path("cnt_000000000000")
    first = _put(stack, seeded.key, path, BODY, "retry-404")
    again = _put(stack, seeded.key, path, BODY, "retry-404")
    assert_error(first, 404, "NOT_FOUND")
    assert (again.status_code, again.json()) == (404, first.json())
    assert update_records(stack, "cnt_000000000000") == 1


def test_the_same_json_written_differently_is_the_same_request(
    stack: Stack, seeded: Seeded
) -> None:
    client = api(stack, seeded.key)
    headers = {"Idempotency-Key": "retry-3", "Content-Type": "application/json", **ASYNC}
    first = client.put(seeded.path, headers=headers, content=orjson.dumps(BODY))
    reordered = b'{ "tags" : ["hot-lead","enterprise"],\n  "position":"VP of Engineering" }'
    again = client.put(seeded.path, headers=headers, content=reordered)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.json()["data"]["update_id"] == first.json()["data"]["update_id"]


@pytest.mark.parametrize("queued", [False, True], ids=["default", "async"])
def test_the_same_key_with_another_request_is_reused(
    stack: Stack, seeded: Seeded, queued: bool
) -> None:
    first = _put(stack, seeded.key, seeded.path, BODY, "retry-4", queued=queued)
    assert first.status_code in (200, 202), first.text
    if queued:
        stack.wait_finished(seeded.key, first.json()["data"]["update_id"])
    after_first = get_contact(stack, seeded.key, seeded.contact_id)
    other_contact = make_contact(stack.db, seeded.account_id)
    answers = [
        _put(stack, seeded.key, seeded.path, {"position": "CTO"}, "retry-4", queued=queued),
        _put(stack, seeded.key, seeded.path, {**BODY, "company": "Acme"}, "retry-4"),
        _put(stack, seeded.key, seeded.path, {}, "retry-4"),
        _put(stack, seeded.key, contact_path(other_contact), BODY, "retry-4", queued=queued),
    ]
    for response in answers:
        assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
    assert get_contact(stack, seeded.key, seeded.contact_id) == after_first
    assert update_records(stack, other_contact) == 0
    assert update_records(stack, seeded.contact_id) == 1
    _one_event(stack)


def test_keys_are_scoped_to_the_account(stack: Stack, seeded: Seeded) -> None:
    other = new_tenant(stack, "globex")
    other_contact = make_contact(stack.db, other.account_id)
    mine = _put(stack, seeded.key, seeded.path, BODY, "shared-key")
    theirs = _put(stack, other.key, contact_path(other_contact), BODY, "shared-key")
    assert mine.status_code == theirs.status_code == 200, (mine.text, theirs.text)
    assert theirs.json()["data"]["id"] == other_contact
    # Same key, same body, same path from another account: not a replay of A's answer
    # (which would hand over A's contact) but B's own request, and A's contact is not B's.
    probe = _put(stack, other.key, seeded.path, BODY, "shared-key-2")
    replay_source = _put(stack, seeded.key, seeded.path, BODY, "shared-key-2")
    assert_error(probe, 404, "NOT_FOUND")
    assert replay_source.status_code == 200, replay_source.text
    assert len(settled_events(stack)) == 2


@pytest.mark.parametrize("length", [256, 1000])
def test_a_key_over_255_characters_is_a_validation_error(
    stack: Stack, seeded: Seeded, length: int
) -> None:
    before = get_contact(stack, seeded.key, seeded.contact_id)
    for queued in (False, True):
        response = _put(stack, seeded.key, seeded.path, BODY, "k" * length, queued=queued)
        named = assert_bad_fields(response, "Idempotency-Key")
        assert "255" in named["Idempotency-Key"]
    assert get_contact(stack, seeded.key, seeded.contact_id) == before
    assert settled_events(stack) == []


def test_an_empty_key_is_a_validation_error(stack: Stack, seeded: Seeded) -> None:
    response = _put(stack, seeded.key, seeded.path, BODY, "")
    assert_bad_fields(response, "Idempotency-Key")
    assert settled_events(stack) == []


def test_a_key_of_255_characters_is_accepted(stack: Stack, seeded: Seeded) -> None:
    first = _put(stack, seeded.key, seeded.path, BODY, "k" * 255)
    again = _put(stack, seeded.key, seeded.path, BODY, "k" * 255)
    assert first.status_code == 200, first.text
    assert again.json() == first.json()
    _one_event(stack)


def _plant(
    stack: Stack, seeded: Seeded, key: str, body: Any, response: dict[str, Any] | None
) -> str:
    """Store an idempotency record exactly as the gateway's Enqueuer does."""
    idem = Idempotency.of(key, "PUT", seeded.path, body)
    assert idem.key_digest == hashlib.sha256(key.encode()).hexdigest()
    update_id = "upd_planted0000000000001"
    stack.redis.set(
        names.idempotency_key(seeded.account_id, idem.key_digest),
        idempotency_record(idem.fingerprint, update_id, response),
        ex=120,
    )
    return update_id


@pytest.mark.parametrize("queued", [False, True], ids=["default", "async"])
def test_a_request_still_in_flight_is_a_conflict(
    stack: Stack, seeded: Seeded, queued: bool
) -> None:
    before = get_contact(stack, seeded.key, seeded.contact_id)
    _plant(stack, seeded, "in-flight", BODY, None)
    response = _put(stack, seeded.key, seeded.path, BODY, "in-flight", queued=queued)
    error = assert_error(response, 409, "CONFLICT")
    assert "flight" in error["message"]
    # A different body under the same key is reused, in flight or not.
    reused = _put(stack, seeded.key, seeded.path, {"position": "CTO"}, "in-flight")
    assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED")
    assert get_contact(stack, seeded.key, seeded.contact_id) == before
    assert settled_events(stack) == []
    assert update_records(stack, seeded.contact_id) == 0


def test_a_finished_record_is_replayed_as_stored(stack: Stack, seeded: Seeded) -> None:
    stored = {"success": True, "data": {"planted": True}}
    update_id = _plant(
        stack, seeded, "finished", BODY,
        {"status": 202, "body": stored, "headers": {"Location": "/external/v1/updates/x"}},
    )
    response = _put(stack, seeded.key, seeded.path, BODY, "finished")
    assert (response.status_code, response.json()) == (202, stored)
    assert response.headers["location"] == "/external/v1/updates/x"
    assert update_id not in response.text
    assert settled_events(stack) == []
