"""API keys and tenancy: hashes at rest, revocation on every gateway, 404 across accounts,
403 without the permission, and a lookup that does not depend on how much of a key matched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text

from contactsync.ids import KEY_DISPLAY_PREFIX_LENGTH
from contactsync.keys import authenticate
from tests.conftest import Stack, make_contact
from tests.e2e.gateways import extra_gateway
from tests.e2e.helpers import (
    ASYNC,
    api,
    assert_error,
    contact_path,
    get_contact,
    new_tenant,
    revoke_key,
    settled_events,
)
from tests.support import ROOT, service_env, wait_until

KEY_CACHE_SECONDS = 2.0  # the documented default bound on a revoked key


def test_keys_are_stored_only_as_hashes(stack: Stack) -> None:
    env = service_env(stack.settings.database_url, stack.settings.redis_url)
    created = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--account", "acme",
         "--permission", "contacts:read", "--rate-limit", "50/s"],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("csk_live_") and len(secret) >= 9 + 32
    with stack.db.reading() as session:
        rows = [dict(r._mapping) for r in session.execute(text("SELECT * FROM api_keys"))]
    assert len(rows) == 1
    (row,) = rows
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["prefix"] == secret[:KEY_DISPLAY_PREFIX_LENGTH]  # what `keys list` shows
    assert row["rate_limit_per_second"] == 50
    secret_part = secret[KEY_DISPLAY_PREFIX_LENGTH:]
    for column, value in row.items():
        assert secret_part not in str(value), column
    if stack.settings.is_sqlite:  # nowhere in the file either (journal pages included)
        path = stack.settings.sqlite_path()
        assert path is not None
        for file in path.parent.glob(path.name + "*"):
            assert secret_part.encode() not in file.read_bytes(), file
    assert api(stack, secret).get(contact_path("cnt_000000000000")).status_code == 404


@pytest.mark.slow  # a gateway of its own, and waits out its key cache
def test_a_revoked_key_is_refused_by_every_gateway_within_the_bound(
    stack: Stack, tmp_path: Path
) -> None:
    tenant = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    path = contact_path(contact_id)
    # A gateway trusting lookups for the default 2 s, beside the stack's (which trusts none).
    with extra_gateway(stack, tmp_path) as cached:
        other = httpx.Client(base_url=cached.base_url, headers={"X-API-Key": tenant.key})
        with other:
            assert other.get(path).status_code == 200  # cached now
            cached_by = time.monotonic()
            assert revoke_key(stack, tenant.key) == 1
            assert_error(api(stack, tenant.key).get(path), 401, "INVALID_API_KEY")
            polls: list[tuple[float, int]] = []  # (sent at, status)

            def refused() -> bool:
                sent_at = time.monotonic()
                polls.append((sent_at, other.get(path).status_code))
                return polls[-1][1] == 401

            wait_until(refused, timeout=10, interval=0.05)
            assert_error(other.put(path, json={"position": "CEO"}), 401, "INVALID_API_KEY")
    # The lookup was cached by `cached_by`: every request sent once its time was up is refused.
    late = [status for sent_at, status in polls if sent_at > cached_by + KEY_CACHE_SECONDS]
    assert set(late) <= {401}, polls


def routes(contact_id: str, update_id: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Return every route that names a contact or an update, by the permission it needs."""
    return {
        "GET contact": ("contacts:read", "GET", {"url": contact_path(contact_id)}),
        "GET update": ("contacts:read", "GET", {"url": f"/external/v1/updates/{update_id}"}),
        "PUT": ("contacts:write", "PUT", {"url": contact_path(contact_id),
                                          "json": {"position": "Intruder"}}),
        "DELETE": ("contacts:delete", "DELETE", {"url": contact_path(contact_id)}),
    }


def test_another_accounts_contact_or_update_is_404_on_every_route(stack: Stack) -> None:
    owner = new_tenant(stack, "owner")
    intruder = new_tenant(stack, "intruder")
    contact_id = make_contact(stack.db, owner.account_id, email="owner@example.com")
    queued = api(stack, owner.key).put(
        contact_path(contact_id), json={"company": "Owner Inc"}, headers=ASYNC
    )
    update_id = queued.json()["data"]["update_id"]
    stack.wait_finished(owner.key, update_id)
    before = get_contact(stack, owner.key, contact_id)
    client = api(stack, intruder.key)
    for name, (_, method, request) in routes(contact_id, update_id).items():
        response = client.request(method, **request)
        assert_error(response, 404, "NOT_FOUND")
        assert "Owner" not in response.text and "owner@" not in response.text, name
    listed = client.get("/external/v1/contacts", params={"email": "owner@example.com"})
    assert listed.json()["data"]["contacts"] == []
    assert get_contact(stack, owner.key, contact_id) == before
    assert [e["update_id"] for e in settled_events(stack)] == [update_id]


def test_a_key_without_the_permission_gets_403_on_every_route(stack: Stack) -> None:
    owner = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, owner.account_id)
    update_id = api(stack, owner.key).put(
        contact_path(contact_id), json={"company": "Acme"}, headers=ASYNC
    ).json()["data"]["update_id"]
    stack.wait_finished(owner.key, update_id)
    before = get_contact(stack, owner.key, contact_id)
    every = {
        **routes(contact_id, update_id),
        "PUT async": ("contacts:write", "PUT", {"url": contact_path(contact_id),
                                                "json": {"position": "X"}, "headers": ASYNC}),
        "list": ("contacts:read", "GET", {"url": "/external/v1/contacts"}),
        "create": ("contacts:write", "POST", {"url": "/external/v1/contacts",
                                              "json": {"name": "New"}}),
        "batch": ("contacts:write", "POST", {"url": "/external/v1/contacts/batch/update",
                                             "json": {"updates": [{"id": contact_id}]}}),
    }
    checked = 0
    for held in ("contacts:read", "contacts:write", "contacts:delete"):
        client = api(stack, new_tenant(stack, "acme", [held]).key)
        for name, (needed, method, request) in every.items():
            if needed == held:
                continue
            error = assert_error(client.request(method, **request), 403, "INSUFFICIENT_PERMISSIONS")
            assert needed in error["message"], name
            checked += 1
    assert checked == 2 * len(every)
    assert get_contact(stack, owner.key, contact_id) == before
    assert [e["update_id"] for e in settled_events(stack)] == [update_id]


def test_a_wrong_key_is_looked_up_by_its_hash_alone(stack: Stack) -> None:
    """The lookup path is the same for every wrong key, however much of a real one it shares.

    The key itself is never compared: its SHA-256 is, by the database's unique index on
    `key_hash`. What a near miss shares with a real key does not survive hashing, so neither
    the statement nor how it finds (or misses) a row depends on it.
    """
    tenant = new_tenant(stack, "acme")
    real = tenant.key
    candidates = {
        "real": real,
        "last character wrong": real[:-1] + ("A" if real[-1] != "A" else "B"),
        "first character wrong": "X" + real[1:],
        "shown prefix only": real[:KEY_DISPLAY_PREFIX_LENGTH],
        "same prefix, rest wrong": real[:KEY_DISPLAY_PREFIX_LENGTH] + "x" * 40,
        "unrelated": "csk_live_" + os.urandom(20).hex(),
        "empty-ish": "x",
    }
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    found: dict[str, bool] = {}
    event.listen(stack.db.engine, "before_cursor_execute", record)
    try:
        for label, candidate in candidates.items():
            before = len(seen)
            with stack.db.reading() as session:
                found[label] = authenticate(session, candidate) is not None
            lookups = [s for s in seen[before:] if "api_keys" in s[0]]
            assert len(lookups) == 1, (label, lookups)
            _, parameters = lookups[0]
            values = list(parameters.values() if isinstance(parameters, dict) else parameters)
            digest = hashlib.sha256(candidate.encode()).hexdigest()
            assert digest in values, label
            assert not any(candidate in str(v) for v in values), label
    finally:
        event.remove(stack.db.engine, "before_cursor_execute", record)
    assert found == {k: k == "real" for k in candidates}
    assert len({s for s, _ in seen if "api_keys" in s}) == 1  # one statement for every key
