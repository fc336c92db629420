"""Issue 11, items 2, 7 and 8 through the real gateway and worker: custom field sizes, plain
validation messages, and strings stored in Unicode normal form C."""

from __future__ import annotations

from contactsync.models import DeadLetter
from tests.conftest import Stack, make_contact
from tests.e2e.helpers import ASYNC, api, assert_bad_fields, contact_path, new_tenant

CONTACTS = "/external/v1/contacts"
BATCH = "/external/v1/contacts/batch/update"
INTERNALS = ("function-after", "constrained", "[", "pydantic", "Value error", "Input should")
JSON = {"Content-Type": "application/json"}
COMPOSED = "caf\u00e9"
DECOMPOSED = "cafe\u0301"


def test_oversized_custom_fields_are_refused_by_put_create_and_batch(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    long_value = {"note": "n" * 1001}
    over_16_kib = {f"k{i:02}": "n" * 1000 for i in range(17)}  # each value valid alone
    for custom in (long_value, over_16_kib):
        assert_bad_fields(client.put(contact_path(contact_id), json={"custom_fields": custom}),
                          "custom_fields")
        assert_bad_fields(client.post(CONTACTS, json={"name": "Ada", "custom_fields": custom}),
                          "custom_fields")
    response = client.post(BATCH, json={"updates": [
        {"id": contact_id, "custom_fields": long_value},
        {"id": contact_id, "custom_fields": over_16_kib},
        {"id": contact_id, "custom_fields": {"note": "n" * 1000}},
    ]})
    assert response.status_code == 202, response.text
    results = response.json()["data"]["results"]
    for result in results[:2]:
        assert set(result["error"]["details"]["fields"]) == {"custom_fields"}, result
    assert results[2]["status"] == "queued"
    assert stack.wait_finished(tenant.key, results[2]["update_id"])["status"] == "applied"


def test_messages_are_plain_words_for_bodies_batch_items_and_query_parameters(
    stack: Stack
) -> None:
    tenant = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    body = {"tags": "vip", "custom_fields": {"plan": {"tier": 1}}, "name": 7}
    put = assert_bad_fields(client.put(contact_path(contact_id), json=body),
                            "tags", "custom_fields", "name")
    assert put == {
        "tags": "must be an array",
        "custom_fields": "the value of 'plan' must be a string, number, boolean or null",
        "name": "must be a string",
    }
    batch = client.post(BATCH, json={"updates": [{"id": contact_id, "tags": ["ok", 3]}]})
    assert batch.json()["data"]["results"][0]["error"]["details"]["fields"] == {
        "tags": "item 1 must be a string"
    }
    listed = assert_bad_fields(client.get(CONTACTS, params={"limit": "many", "page": 0}),
                               "limit", "page")
    assert listed == {"limit": "must be a whole number", "page": "must be at least 1"}
    raw = {b"\xff\xfe{}": "not valid UTF-8", b'{"n": 1e400}': "too large",
           b'{"position": ': "unexpected end of data"}
    bodies = [
        assert_bad_fields(client.put(contact_path(contact_id), content=text, headers=JSON),
                          "_body")["_body"]
        for text in raw
    ]
    for message, says in zip(bodies, raw.values(), strict=True):
        assert says in message and "str " not in message and "double" not in message, message
    for message in (*put.values(), *listed.values(), *bodies):
        assert not any(marker in message for marker in INTERNALS), message


def test_strings_are_stored_composed_and_found_in_either_form(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    client = api(stack, tenant.key)
    created = client.post(CONTACTS, json={
        "name": f"Chez {DECOMPOSED}", "company": DECOMPOSED,
        "tags": [COMPOSED, DECOMPOSED], "custom_fields": {DECOMPOSED: DECOMPOSED},
    })
    assert created.status_code == 201, created.text
    contact = created.json()["data"]
    assert contact["name"] == f"Chez {COMPOSED}" and contact["company"] == COMPOSED
    assert contact["tags"] == [COMPOSED]
    assert contact["custom_fields"] == {COMPOSED: COMPOSED}
    updated = client.put(contact_path(contact["id"]), json={"tags": [DECOMPOSED, "x", COMPOSED]})
    assert updated.status_code == 200, updated.text
    assert updated.json()["data"]["tags"] == [COMPOSED, "x"]
    for form in (COMPOSED, DECOMPOSED):
        found = client.get(CONTACTS, params={"tags": form, "company": form}).json()["data"]
        assert [c["id"] for c in found["contacts"]] == [contact["id"]]


def test_the_worker_refuses_an_update_that_would_grow_custom_fields_past_16_kib(
    stack: Stack
) -> None:
    tenant = new_tenant(stack, "acme")
    client = api(stack, tenant.key)
    # 16 values of 1,000 characters: 16,145 bytes of JSON, just under the bound.
    stored = {f"k{i:02}": "v" * 1000 for i in range(16)}
    created = client.post(CONTACTS, json={"name": "Ada", "custom_fields": stored})
    assert created.status_code == 201, created.text
    path = contact_path(created.json()["data"]["id"])
    more = {"custom_fields": {"more": "m" * 1000}}  # valid alone, too much on this contact
    over = assert_bad_fields(client.put(path, json=more), "custom_fields")
    assert "16384 bytes" in over["custom_fields"]
    queued = client.put(path, json=more, headers=ASYNC)
    assert queued.status_code == 202, queued.text
    record = stack.wait_finished(tenant.key, queued.json()["data"]["update_id"])
    assert (record["status"], record["error"]["code"]) == ("failed", "VALIDATION_ERROR")
    with stack.db.reading() as session:
        assert session.get(DeadLetter, record["update_id"]) is not None
    assert client.get(path).json()["data"]["custom_fields"] == stored
