"""Create, read and update contacts, update records, and the operational endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from contactsync.models import Contact
from contactsync.timeutil import parse_iso
from tests.conftest import Stack, Tenant, make_contact
from tests.e2e.helpers import (
    ASYNC,
    CONTACT_ID,
    CONTACT_KEYS,
    api,
    assert_bad_fields,
    assert_contact_shape,
    assert_update_shape,
    contact_path,
    get_contact,
    new_tenant,
    settled_events,
)

CONTACTS = "/external/v1/contacts"


@pytest.fixture
def tenant(stack: Stack) -> Tenant:
    return new_tenant(stack, "acme")


def _contacts(stack: Stack) -> int:
    with stack.db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(Contact)) or 0)


def _put(stack: Stack, key: str, contact_id: str, body: Any) -> dict[str, Any]:
    response = api(stack, key).put(contact_path(contact_id), json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def _queue(stack: Stack, key: str, contact_id: str, body: Any) -> dict[str, Any]:
    """PUT asynchronously; return the finished update record."""
    response = api(stack, key).put(contact_path(contact_id), json=body, headers=ASYNC)
    assert response.status_code == 202, response.text
    queued = response.json()["data"]
    assert_update_shape(queued)
    assert (queued["status"], queued["applied_at"], queued["changed_fields"]) == (
        "queued", None, [],
    )
    return stack.wait_finished(key, queued["update_id"])


# --- POST /external/v1/contacts ------------------------------------------------------------


def test_create_answers_201_with_the_normalized_contact(stack: Stack, tenant: Tenant) -> None:
    body = {
        "name": "  Jane Roe ", "email": "jane@example.com", "phone": "+55 (11) 99999-9999",
        "company": "Globex", "position": "CTO", "source": "linkedin",
        "linkedin_url": "https://linkedin.com/in/janeroe",
        "tags": [" vip ", "vip", "lead"], "custom_fields": {"plan": "pro", "gone": None},
    }
    response = api(stack, tenant.key).post(CONTACTS, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["success"] is True
    data = response.json()["data"]
    assert_contact_shape(data)
    assert CONTACT_ID.match(data["id"])
    expected = {
        **body, "name": "Jane Roe", "tags": ["vip", "lead"], "custom_fields": {"plan": "pro"},
    }
    assert {k: data[k] for k in expected} == expected
    assert data["created_at"] == data["updated_at"]
    assert get_contact(stack, tenant.key, data["id"]) == data


def test_create_defaults_source_to_other(stack: Stack, tenant: Tenant) -> None:
    response = api(stack, tenant.key).post(CONTACTS, json={"name": "Jane Roe"})
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert set(data) == CONTACT_KEYS
    assert data["source"] == "other"
    assert (data["email"], data["phone"], data["tags"], data["custom_fields"]) == (
        None, None, [], {},
    )


def test_created_ids_are_distinct(stack: Stack, tenant: Tenant) -> None:
    client = api(stack, tenant.key)
    ids = [client.post(CONTACTS, json={"name": f"C {i}"}).json()["data"]["id"] for i in range(5)]
    assert len(set(ids)) == 5
    assert all(CONTACT_ID.match(i) for i in ids), ids


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        pytest.param({}, {"name"}, id="no-name"),
        pytest.param({"email": "jane@example.com"}, {"name"}, id="only-email"),
        pytest.param({"name": None}, {"name"}, id="null-name"),
        pytest.param({"name": ""}, {"name"}, id="empty-name"),
        pytest.param({"name": "Jane", "source": "twitter"}, {"source"}, id="bad-source"),
        pytest.param({"name": "Jane", "source": None}, {"source"}, id="null-source"),
        pytest.param({"name": "Jane", "id": "cnt_aaaaaaaaaaaa"}, {"id"}, id="client-id"),
        pytest.param({"name": "Jane", "tags": None}, {"tags"}, id="null-tags"),
        pytest.param({"email": "nope"}, {"name", "email"}, id="two-bad"),
    ],
)
def test_create_rejects_a_bad_body_and_creates_nothing(
    stack: Stack, tenant: Tenant, body: dict[str, Any], fields: set[str]
) -> None:
    response = api(stack, tenant.key).post(CONTACTS, json=body)
    assert_bad_fields(response, *fields)
    assert _contacts(stack) == 0


# --- GET /external/v1/contacts/{id} ---------------------------------------------------------


def test_get_answers_exactly_the_seed_fields(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(
        stack.db, tenant.account_id, email="john@example.com", phone="+5511999999999",
        company="Acme Inc", source="linkedin", tags=["a"], custom_fields={"n": 1.5, "b": True},
    )
    response = api(stack, tenant.key).get(contact_path(contact_id))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "data"} and body["success"] is True
    data = body["data"]
    assert_contact_shape(data)
    assert data["id"] == contact_id
    assert (data["name"], data["email"], data["source"], data["position"]) == (
        "John Doe", "john@example.com", "linkedin", None,
    )
    assert data["custom_fields"] == {"n": 1.5, "b": True}


# --- PUT semantics ------------------------------------------------------------------------


def test_an_empty_put_is_a_noop(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(stack.db, tenant.account_id, position="CTO", tags=["x"])
    before = get_contact(stack, tenant.key, contact_id)
    assert _put(stack, tenant.key, contact_id, {}) == before
    record = _queue(stack, tenant.key, contact_id, {})
    assert (record["status"], record["changed_fields"]) == ("noop", [])
    assert get_contact(stack, tenant.key, contact_id) == before
    assert settled_events(stack) == []


def test_updated_at_moves_only_when_a_field_really_changes(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(
        stack.db, tenant.account_id, position="CTO", email="john@example.com",
        tags=["a", "b"], custom_fields={"plan": "pro", "seats": 5},
    )
    before = get_contact(stack, tenant.key, contact_id)
    same = {
        "position": " CTO ", "email": "john@example.com", "tags": ["a", "b", "a"],
        "custom_fields": {"plan": "pro", "seats": 5, "never-set": None},
    }
    assert _put(stack, tenant.key, contact_id, same) == before
    record = _queue(stack, tenant.key, contact_id, same)
    assert (record["status"], record["changed_fields"], record["error"]) == ("noop", [], None)
    assert settled_events(stack) == []

    after = _put(stack, tenant.key, contact_id, {"position": "CEO", "tags": ["a", "b"]})
    assert after["position"] == "CEO"
    assert parse_iso(after["updated_at"]) > parse_iso(before["updated_at"])
    assert after["created_at"] == before["created_at"]
    (event,) = settled_events(stack)
    assert event["changes"] == {"position": {"old": "CTO", "new": "CEO"}}
    assert event["contact"] == after


def test_update_records_read_applied_noop_and_not_found(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(stack.db, tenant.account_id)
    applied = _queue(
        stack, tenant.key, contact_id, {"position": "CTO", "custom_fields": {"plan": "pro"}}
    )
    noop = _queue(stack, tenant.key, contact_id, {"position": "CTO"})
    missing = _queue(stack, tenant.key, "cnt_000000000000", {"position": "CTO"})
    client = api(stack, tenant.key)
    for record in (applied, noop, missing):
        response = client.get(f"/external/v1/updates/{record['update_id']}")
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"success", "data"}
        assert response.json()["data"] == record
        assert_update_shape(record)
        assert parse_iso(record["applied_at"]) >= parse_iso(record["received_at"])
    assert applied["contact_id"] == contact_id
    assert (applied["status"], applied["error"]) == ("applied", None)
    assert sorted(applied["changed_fields"]) == ["custom_fields.plan", "position"]
    assert (noop["status"], noop["changed_fields"], noop["error"]) == ("noop", [], None)
    assert (missing["status"], missing["contact_id"]) == ("not_found", "cnt_000000000000")
    assert missing["changed_fields"] == []
    assert set(missing["error"]) == {"code", "message"}
    assert missing["error"]["code"] == "NOT_FOUND"
    assert [e["update_id"] for e in settled_events(stack)] == [applied["update_id"]]


def test_custom_fields_merge_key_by_key(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(stack.db, tenant.account_id, custom_fields={"kept": "yes"})
    first = _put(
        stack, tenant.key, contact_id,
        {"custom_fields": {"plan": "pro", "seats": 5, "trial": True}},
    )
    assert first["custom_fields"] == {"kept": "yes", "plan": "pro", "seats": 5, "trial": True}
    second = _put(
        stack, tenant.key, contact_id,
        {"custom_fields": {"plan": None, "seats": 6, "region": "eu", "absent": None}},
    )
    assert second["custom_fields"] == {"kept": "yes", "seats": 6, "trial": True, "region": "eu"}
    assert get_contact(stack, tenant.key, contact_id)["custom_fields"] == second["custom_fields"]
    events = settled_events(stack)
    assert [set(e["changes"]) for e in events] == [
        {"custom_fields.plan", "custom_fields.seats", "custom_fields.trial"},
        {"custom_fields.plan", "custom_fields.seats", "custom_fields.region"},
    ]
    assert events[1]["changes"]["custom_fields.plan"] == {"old": "pro", "new": None}
    assert events[1]["changes"]["custom_fields.seats"] == {"old": 5, "new": 6}


def test_tags_are_replaced_not_merged(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(stack.db, tenant.account_id, tags=["old"])
    assert _put(stack, tenant.key, contact_id, {"tags": ["a", "b"]})["tags"] == ["a", "b"]
    replaced = _put(stack, tenant.key, contact_id, {"tags": [" c ", "d", "c", "a"]})
    assert replaced["tags"] == ["c", "d", "a"]
    assert _put(stack, tenant.key, contact_id, {"tags": []})["tags"] == []
    events = settled_events(stack)
    assert [e["changes"]["tags"] for e in events] == [
        {"old": ["old"], "new": ["a", "b"]},
        {"old": ["a", "b"], "new": ["c", "d", "a"]},
        {"old": ["c", "d", "a"], "new": []},
    ]


@pytest.mark.parametrize(
    ("prefer", "status"),
    [
        ("respond-async", 202),
        ("RESPOND-ASYNC", 202),
        ("return=minimal, respond-async; foo=1", 202),
        ("wait=1", 200),
        ("respond-asynchronously", 200),
        ("", 200),
    ],
)
def test_prefer_respond_async_is_read_as_rfc_7240_says(
    stack: Stack, tenant: Tenant, prefer: str, status: int
) -> None:
    contact_id = make_contact(stack.db, tenant.account_id)
    response = api(stack, tenant.key).put(
        contact_path(contact_id), json={"position": prefer or "none"}, headers={"Prefer": prefer}
    )
    assert response.status_code == status, response.text
    if status == 202:
        assert response.headers["preference-applied"] == "respond-async"
        stack.wait_finished(tenant.key, response.json()["data"]["update_id"])
    else:
        assert "preference-applied" not in response.headers
        assert response.json()["data"]["position"] == (prefer or "none")


def test_null_clears_a_field_and_only_sent_fields_change(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(
        stack.db, tenant.account_id, email="john@example.com", phone="+5511999999999",
        company="Acme Inc", position="CTO", linkedin_url="https://linkedin.com/in/johndoe",
    )
    before = get_contact(stack, tenant.key, contact_id)
    after = _put(stack, tenant.key, contact_id, {"email": None, "company": "", "phone": None})
    assert (after["email"], after["company"], after["phone"]) == (None, None, None)
    untouched = ("name", "position", "linkedin_url", "tags", "custom_fields", "source")
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}


# --- operational endpoints -------------------------------------------------------------------


def test_health_and_readiness_need_no_key(stack: Stack) -> None:
    client = api(stack)
    health = client.get("/healthz")
    ready = client.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"redis": "ok", "database": "ok"}}


def test_metrics_count_requests_by_route_template(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(stack.db, tenant.account_id)
    api(stack, tenant.key).get(contact_path(contact_id))
    api(stack).get(contact_path(contact_id))
    api(stack).get("/openapi.json")
    response = api(stack).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE contactsync_gateway_requests_total counter" in text
    route = 'route="/external/v1/contacts/{contact_id}"'
    assert f'contactsync_gateway_requests_total{{method="GET",{route},status="200"}}' in text
    assert f'contactsync_gateway_requests_total{{method="GET",{route},status="401"}}' in text
    assert 'route="/openapi.json"' in text
    assert contact_id not in text  # ids are unbounded: never a label


def _samples(stack: Stack) -> dict[str, float]:
    """Return the gateway's metric samples, keyed by name and labels as written."""
    text = api(stack).get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_enqueues_and_how_waits_end(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(stack.db, tenant.account_id)
    before = _samples(stack)
    _put(stack, tenant.key, contact_id, {"position": "CTO"})
    _put(stack, tenant.key, contact_id, {"position": "CTO"})
    missing = api(stack, tenant.key).put(contact_path("cnt_000000000000"), json={"company": "X"})
    assert missing.status_code == 404
    _queue(stack, tenant.key, contact_id, {"position": "CEO"})
    after = _samples(stack)

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    outcome = "contactsync_gateway_wait_outcomes_total{{outcome=\"{}\"}}"
    assert delta(outcome.format("applied")) == 1
    assert delta(outcome.format("noop")) == 1
    assert delta(outcome.format("not_found")) == 1
    assert delta("contactsync_gateway_enqueue_seconds_count") == 4


EXPECTED_ROUTES = {
    ("put", "/external/v1/contacts/{contact_id}"),
    ("get", "/external/v1/contacts/{contact_id}"),
    ("post", "/external/v1/contacts"),
    ("get", "/external/v1/updates/{update_id}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}


def test_openapi_lists_every_route_with_its_errors(stack: Stack, tenant: Tenant) -> None:
    response = api(stack).get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    listed = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert listed >= EXPECTED_ROUTES, EXPECTED_ROUTES - listed
    put = spec["paths"]["/external/v1/contacts/{contact_id}"]["put"]
    headers = {p["name"].lower() for p in put["parameters"] if p["in"] == "header"}
    assert {"prefer", "idempotency-key"} <= headers
    body_schema = put["requestBody"]["content"]["application/json"]["schema"]
    assert set(body_schema["properties"]) == CONTACT_KEYS - {
        "id", "source", "created_at", "updated_at",
    }
    assert body_schema["additionalProperties"] is False
    assert {"200", "202", "400", "401", "403", "404", "409", "413", "415", "422"} <= set(
        put["responses"]
    )
    envelope = "#/components/schemas/ErrorEnvelope"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("summary") or op.get("description"), (method, path)
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": envelope}, (method, path, status)
    assert "HTTPValidationError" not in response.text  # errors are never FastAPI's shape
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerKey"]["scheme"] == "bearer"
    assert {"ApiKeyHeader": []} in put["security"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    # Every listed route is served (the ones added since too): no 405, and no 404 but for
    # the made-up ids.
    client = api(stack, tenant.key)
    for method, path in sorted(listed):
        concrete = path.format(
            contact_id="cnt_000000000000", update_id="upd_0", webhook_id="whk_0"
        )
        answer = client.request(method.upper(), concrete, json={"name": "x"})
        assert answer.status_code not in (405,), (method, path, answer.text)
        if "{" not in path:
            assert answer.status_code != 404, (method, path)
