"""HTTP → queue → worker → database → event, on a real gateway and worker."""

from __future__ import annotations

from tests.conftest import Stack, make_contact, make_tenant
from tests.support import wait_until


def test_default_mode_applies_and_answers_with_the_contact(stack: Stack) -> None:
    tenant = make_tenant(stack.db, "acme")
    contact_id = make_contact(stack.db, tenant.account_id, email="john@example.com")
    with stack.client(tenant.key) as client:
        response = client.put(
            f"/external/v1/contacts/{contact_id}",
            json={"position": "VP of Engineering", "tags": ["hot-lead", "enterprise"]},
        )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["position"] == "VP of Engineering"
    assert data["tags"] == ["hot-lead", "enterprise"]
    assert data["email"] == "john@example.com"
    events = wait_until(stack.events)
    assert [e["type"] for e in events] == ["contact.updated"]
    assert set(events[0]["changes"]) == {"position", "tags"}


def test_async_mode_queues_then_applies(stack: Stack) -> None:
    tenant = make_tenant(stack.db, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    with stack.client(tenant.key) as client:
        response = client.put(
            f"/external/v1/contacts/{contact_id}",
            json={"custom_fields": {"plan": "pro"}},
            headers={"Prefer": "respond-async"},
        )
        assert response.status_code == 202, response.text
        record = response.json()["data"]
        assert response.headers["location"] == f"/external/v1/updates/{record['update_id']}"
        assert response.headers["preference-applied"] == "respond-async"
        finished = stack.wait_finished(tenant.key, record["update_id"])
        assert finished["status"] == "applied"
        assert finished["changed_fields"] == ["custom_fields.plan"]
        contact = client.get(f"/external/v1/contacts/{contact_id}").json()["data"]
        assert contact["custom_fields"] == {"plan": "pro"}
