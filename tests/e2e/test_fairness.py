"""One tenant must not starve the others: update buckets and per-account backlogs (DESIGN §2).

Real processes throughout: gateways, the stack's worker, Redis and the database.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from contactsync import names
from tests.conftest import Stack, make_contact
from tests.e2e.gateways import extra_gateway
from tests.e2e.helpers import ASYNC, api, assert_error, contact_path, get_contact, new_tenant
from tests.support import ROOT, service_env, wait_until

pytestmark = pytest.mark.slow  # a flood from three threads against gateways of its own

BATCH = "/external/v1/contacts/batch/update"
FLOOD_SECONDS = 6.0
APPLIED_WITHIN_SECONDS = 10.0  # "within seconds", on a machine shared with other test runs


def _created_key(stack: Stack, *options: str) -> str:
    env = service_env(stack.settings.database_url, stack.settings.redis_url)
    created = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--account", "bulk",
         "--permission", "contacts:read", "--permission", "contacts:write", *options],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )
    return created.stdout.strip().splitlines()[-1]


def test_a_batch_takes_a_token_per_item_from_its_keys_update_bucket(stack: Stack) -> None:
    # 100 updates a second: a bucket of 1,000 (ten seconds' worth, and at least a full batch).
    key = _created_key(stack, "--update-rate-limit", "100/s")
    client = api(stack, key)
    contact_id = client.post("/external/v1/contacts", json={"name": "Ann"}).json()["data"]["id"]
    first = client.post(BATCH, json={"updates": [
        {"id": contact_id, "position": f"P{n}"} for n in range(1000)
    ]})
    assert first.status_code == 202, first.text
    # The bucket is empty now: a whole batch is refused, even a small one, and changes nothing.
    refused = client.post(BATCH, json={"updates": [{"id": contact_id, "position": "Refused"}] * 50})
    error = assert_error(refused, 429, "RATE_LIMIT_EXCEEDED")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 10 and error["details"] == {"retry_after": retry_after}
    assert "100 batch items per second" in error["message"]
    # A single PUT spends its request token only: the update bucket does not refuse it.
    single = client.put(contact_path(contact_id), json={"company": "Acme"}, headers=ASYNC)
    assert single.status_code == 202, single.text
    wait_until(lambda: not stack.redis.zcard(names.PENDING_KEY), timeout=30)
    contact = get_contact(stack, key, contact_id)
    assert (contact["position"], contact["company"]) == ("P999", "Acme")
    # Another key has a bucket of its own (the default 1,000 a second, bursts of 10,000).
    other = new_tenant(stack, "other")
    other_id = make_contact(stack.db, other.account_id)
    for _ in range(3):
        batch = api(stack, other.key).post(BATCH, json={"updates": [
            {"id": other_id, "position": "Other"}
        ] * 1000})
        assert batch.status_code == 202, batch.text


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("limits", [
    # The account's own limit refuses the flood, long before the queues as a whole are full.
    {"CONTACTSYNC_MAX_BACKLOG": "4000", "CONTACTSYNC_MAX_ACCOUNT_BACKLOG": "1500"},
    # The queues as a whole are over their limit: only the account holding most is refused.
    {"CONTACTSYNC_MAX_BACKLOG": "1000", "CONTACTSYNC_MAX_ACCOUNT_BACKLOG": "5000"},
], ids=["account-limit", "global-limit"])
def test_one_accounts_batch_flood_neither_refuses_nor_stalls_another_accounts_puts(
    stack: Stack, tmp_path: Path, limits: dict[str, str]
) -> None:
    flooders = [new_tenant(stack, "bulk") for _ in range(3)]  # three keys of one account
    bulk_contacts = [make_contact(stack.db, flooders[0].account_id) for _ in range(20)]
    single = new_tenant(stack, "single")
    single_contact = make_contact(stack.db, single.account_id)
    env = {**limits, "CONTACTSYNC_BACKLOG_REFRESH_SECONDS": "0.05"}
    with extra_gateway(stack, tmp_path, **env) as gateway:
        stop = threading.Event()
        bulk_statuses: list[int] = []

        def flood(key: str) -> None:
            with httpx.Client(base_url=gateway.base_url, headers={"X-API-Key": key},
                              timeout=30) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    body = {"updates": [
                        {"id": bulk_contacts[i % len(bulk_contacts)], "company": f"C{n}-{i}"}
                        for i in range(1000)
                    ]}
                    bulk_statuses.append(client.post(BATCH, json=body).status_code)

        threads = [threading.Thread(target=flood, args=(f.key,)) for f in flooders]
        for thread in threads:
            thread.start()
        single_statuses: list[int] = []
        single_updates: list[str] = []
        try:
            with httpx.Client(base_url=gateway.base_url, headers={"X-API-Key": single.key},
                              timeout=30) as client:
                # Let the flood fill its backlog first.
                wait_until(lambda: 503 in bulk_statuses, timeout=30)
                ends = time.monotonic() + FLOOD_SECONDS
                n = 0
                while time.monotonic() < ends:
                    n += 1
                    response = client.put(contact_path(single_contact),
                                          json={"position": f"P{n}"}, headers=ASYNC)
                    single_statuses.append(response.status_code)
                    if response.status_code == 202:
                        single_updates.append(response.json()["data"]["update_id"])
                    time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    assert single_statuses and set(single_statuses) == {202}, single_statuses
    assert set(bulk_statuses) <= {202, 429, 503}, set(bulk_statuses)
    assert 202 in bulk_statuses and 503 in bulk_statuses
    # Every single update is applied, each within seconds of its acceptance, the flood
    # notwithstanding.
    client = api(stack, single.key)

    def record(update_id: str) -> dict[str, str] | None:
        data: dict[str, str] = client.get(f"/external/v1/updates/{update_id}").json()["data"]
        return data if data["status"] != "queued" else None

    late = []
    for update_id in single_updates:
        data = wait_until(lambda u=update_id: record(u), timeout=60)  # type: ignore[misc]
        assert data["status"] == "applied", data
        took = _at(data["applied_at"]) - _at(data["received_at"])
        if took > APPLIED_WITHIN_SECONDS:
            late.append(round(took, 1))
    assert not late, late
    assert get_contact(stack, single.key, single_contact)["position"] == f"P{len(single_statuses)}"
    # Each finished update left its account's count: the flood's drains to nothing too.
    for account_id in (single.account_id, flooders[0].account_id):
        key = names.account_pending_key(account_id)
        wait_until(lambda k=key: stack.redis.zcard(k) == 0, timeout=60)  # type: ignore[misc]
