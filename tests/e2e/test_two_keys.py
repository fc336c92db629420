"""Two credentials in one request must name one key: which one wins is never up to their order."""

from __future__ import annotations

from typing import Any

from tests.conftest import Stack, make_contact
from tests.e2e.helpers import (
    ASYNC,
    api,
    assert_error,
    contact_path,
    get_contact,
    new_tenant,
    update_records,
)

Headers = list[tuple[str, str]]


def _requests(contact_id: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Return a PUT (the edge's own path), a PUT async, a GET and a batch (through FastAPI)."""
    path = contact_path(contact_id)
    return {
        "PUT": ("PUT", path, {"json": {"position": "Changed"}}),
        "PUT async": ("PUT", path, {"json": {"position": "Changed"}, "headers": ASYNC}),
        "GET": ("GET", path, {}),
        "batch": ("POST", "/external/v1/contacts/batch/update",
                  {"json": {"updates": [{"id": contact_id, "position": "Changed"}]}}),
    }


def _send(stack: Stack, headers: Headers, method: str, url: str, request: dict[str, Any]) -> Any:
    extra = list(request.pop("headers", {}).items())
    return api(stack).request(method, url, headers=headers + extra, **request)


def test_two_different_keys_are_invalid_in_either_order(stack: Stack) -> None:
    writer = new_tenant(stack, "acme")
    reader = new_tenant(stack, "acme", ["contacts:read"])
    contact_id = make_contact(stack.db, writer.account_id, position="CTO")
    before = get_contact(stack, writer.key, contact_id)
    mixes: dict[str, Headers] = {
        "writer then reader": [("X-API-Key", writer.key), ("X-API-Key", reader.key)],
        "reader then writer": [("X-API-Key", reader.key), ("X-API-Key", writer.key)],
        "a key and an unknown one": [("X-API-Key", writer.key), ("X-API-Key", "csk_live_x")],
        "two bearers": [("Authorization", f"Bearer {writer.key}"),
                        ("Authorization", f"Bearer {reader.key}")],
        "two keys, bearer agreeing with one": [
            ("X-API-Key", writer.key), ("X-API-Key", reader.key),
            ("Authorization", f"Bearer {writer.key}"),
        ],
        "key and bearer differ": [("X-API-Key", writer.key),
                                  ("Authorization", f"Bearer {reader.key}")],
    }
    for mix, headers in mixes.items():
        for name, (method, url, request) in _requests(contact_id).items():
            response = _send(stack, headers, method, url, dict(request))
            assert response.status_code == 401, (mix, name, response.text)
            assert_error(response, 401, "INVALID_API_KEY")
    assert get_contact(stack, writer.key, contact_id) == before
    assert update_records(stack, contact_id) == 0  # nothing was queued either


def test_the_same_key_twice_is_one_key(stack: Stack) -> None:
    writer = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, writer.account_id, position="CTO")
    same: Headers = [("X-API-Key", writer.key), ("X-API-Key", writer.key),
                     ("Authorization", f"Bearer {writer.key}")]
    for name, (method, url, request) in _requests(contact_id).items():
        response = _send(stack, same, method, url, dict(request))
        assert response.status_code in (200, 202), (name, response.text)
