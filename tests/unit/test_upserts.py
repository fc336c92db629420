"""Upserts' pure parts: match names, their keys in order, the created contact's id, the item's
validation, and the stored body a worker accepts."""

from __future__ import annotations

import orjson
import pytest

from contactsync.errors import ValidationFailed
from contactsync.identities import stored_key
from contactsync.ids import contact_id_for, new_update_id
from contactsync.schemas import CONTACT_ID_PATTERN, ContactUpsert, parse_body
from contactsync.updates import AcceptedUpdate
from contactsync.upserts import is_match_name, match_keys
from tasks.validation import BadMessage, parse_stored_update


def test_the_created_contacts_id_is_fixed_by_the_update_id() -> None:
    update_id = new_update_id()
    assert contact_id_for(update_id) == contact_id_for(update_id)
    assert CONTACT_ID_PATTERN.fullmatch(contact_id_for(update_id))
    assert contact_id_for(update_id) != contact_id_for(new_update_id())


@pytest.mark.parametrize(("name", "ok"), [
    ("email", True), ("linkedin_url", True), ("external_ids.hubspot", True),
    ("external_ids.", False), ("external_ids.Hub", False), ("phone", False), ("name", False),
])
def test_match_names(name: str, ok: bool) -> None:
    assert is_match_name(name) is ok


def test_match_keys_keep_the_order_and_skip_what_the_patch_lacks() -> None:
    patch = {"email": "A@x.com", "external_ids": {"crm": "7", "old": None}}
    keys = match_keys(["external_ids.old", "external_ids.crm", "linkedin_url", "email"], patch)
    assert keys == [stored_key("external_ids.crm", "7"), stored_key("email", "a@X.COM")]


def test_an_item_parses_to_its_match_on_and_patch() -> None:
    item = {"match_on": "email", "email": "ann@example.com", "source": "csv", "name": "Ann"}
    assert parse_body(ContactUpsert, item).upsert() == (
        ["email"], {"email": "ann@example.com", "source": "csv", "name": "Ann"})


def test_identities_an_item_does_not_carry_are_skipped_in_order() -> None:
    item = {"match_on": ["linkedin_url", "email", "external_ids.hubspot"], "name": "Ann",
            "email": None, "external_ids": {"hubspot": "51"}}
    assert parse_body(ContactUpsert, item).upsert()[0] == ["external_ids.hubspot"]


@pytest.mark.parametrize("item", [
    {"match_on": "email", "name": "A"},  # names an identity it does not carry
    {"match_on": "email", "email": None, "name": "A"},
    {"match_on": [], "email": "a@example.com"},
    {"match_on": ["email", "email"], "email": "a@example.com"},
    {"match_on": "phone", "phone": "12345"},
    {"email": "a@example.com"},  # no match_on
    {"match_on": "email", "email": "a@example.com", "source": None},
    {"match_on": "email", "email": "a@example.com", "id": "cnt_abcdefabcdef"},
])
def test_bad_items_are_refused(item: dict[str, object]) -> None:
    with pytest.raises(ValidationFailed):
        parse_body(ContactUpsert, item).upsert()


def _stored(**changes: object) -> bytes:
    update = AcceptedUpdate(
        update_id="upd_abc", account_id="acc_x", contact_id="cnt_abcdefabcdef", seq=1,
        received_at="2026-01-01T00:00:00.000Z", patch={"email": "a@example.com", "source": "csv"},
        queue="contacts.bulk", match_on=["email"],
    )
    return orjson.dumps({**orjson.loads(update.to_json()), **changes})


def test_a_worker_reads_an_upserts_stored_body() -> None:
    assert parse_stored_update(_stored()).match_on == ["email"]


@pytest.mark.parametrize("changes", [
    {"match_on": ["linkedin_url"]},  # not in its patch
    {"match_on": []},
    {"match_on": [3]},
    {"match_on": None, "patch": {"source": "csv"}},  # source belongs to upserts only
    {"patch": {"email": "a@example.com", "source": "elsewhere"}},
])
def test_a_worker_refuses_a_bad_upsert_body(changes: dict[str, object]) -> None:
    with pytest.raises(BadMessage):
        parse_stored_update(_stored(**changes))
