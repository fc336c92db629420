"""A flood of made-up keys against a real gateway: bounded database look-ups, valid keys served."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from api_gateway.key_cache import MISS_INTERVAL
from contactsync.keys import create_key
from tests.conftest import ALL_PERMISSIONS, Stack, Tenant, make_contact
from tests.e2e.gateways import extra_gateway
from tests.e2e.helpers import contact_path, new_tenant

pytestmark = pytest.mark.slow  # floods a gateway of its own with made-up keys

FLOOD = 3000
CLIENTS = 24
LOOKUPS = "contactsync_gateway_key_lookups_total"
QUERIES = "contactsync_gateway_key_lookup_queries_total"


def _samples(client: httpx.Client) -> dict[str, float]:
    samples = {}
    for line in client.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_flood_of_unknown_keys_costs_bounded_lookups_and_spares_valid_keys(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.db.unit_of_work() as session:  # a rate that a tight loop stays under
        row, key = create_key(session, "acme", ALL_PERMISSIONS, rate_limit_per_second=100_000)
    tenant = Tenant(row.account_id, key)
    path = contact_path(make_contact(stack.db, tenant.account_id))
    flood = ["csk_live_" + secrets.token_urlsafe(30) for _ in range(FLOOD)]
    with extra_gateway(stack, tmp_path, CONTACTSYNC_KEY_CACHE_SECONDS="30") as gateway, \
            httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        assert client.get(path, headers={"X-API-Key": tenant.key}).status_code == 200
        before = _samples(client)
        valid_statuses: list[int] = []
        done = threading.Event()

        def get(key: str, own: httpx.Client) -> int:
            return own.get(path, headers={"X-API-Key": key}).status_code

        def send(keys: list[str]) -> list[int]:
            with httpx.Client(base_url=gateway.base_url, timeout=30) as own:
                return [get(key, own) for key in keys]

        def use_the_valid_key() -> None:
            with httpx.Client(base_url=gateway.base_url, timeout=30) as own:
                while not done.is_set():
                    valid_statuses.append(get(tenant.key, own))

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            valid = pool.submit(use_the_valid_key)
            flooding = [pool.submit(send, flood[n::CLIENTS]) for n in range(CLIENTS)]
            new = new_tenant(stack, "acme")  # made and used while the flood goes on
            new_status = get(new.key, client)
            assert not all(f.done() for f in flooding)
            flooded = [f.result() for f in flooding]
            done.set()
            valid.result()
        elapsed = time.monotonic() - started
        again = send(flood[:500])  # refused from memory now
        after = _samples(client)

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert {s for statuses in flooded for s in statuses} == {401}
    assert set(again) == {401}
    assert valid_statuses and set(valid_statuses) == {200}
    assert new_status == 200
    assert delta(f'{LOOKUPS}{{result="unknown"}}') == FLOOD  # each made-up key asked once
    assert delta(f'{LOOKUPS}{{result="found"}}') == 1  # the new key; the cached one never
    assert delta(QUERIES) <= elapsed / MISS_INTERVAL + 3, (delta(QUERIES), elapsed)
