"""Sequence numbers under restarts: Redis losing every byte, and two gateways at once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bench.faults.load import Load
from bench.faults.oracle import check, wait_drained
from bench.faults.services import Stack, Tenant
from contactsync import names
from contactsync.db import Database
from tests.faults.reads import contact_row, put_async, wait_status
from tests.support import wait_until

pytestmark = pytest.mark.slow  # a fault stack of its own


def ready(base_url: str) -> bool:
    return httpx.get(f"{base_url}/readyz", timeout=3).status_code == 200


def test_a_later_update_still_wins_after_redis_lost_all_its_data(
    fault_stack: Stack, faults_db: Database, tenant: Tenant
) -> None:
    stack = fault_stack
    base_url = stack.start_gateway("g1")
    stack.start_worker("w1")
    stack.wait_gateways()
    stack.wait_workers()
    contact_id = tenant.contact_ids[0]
    first = put_async(base_url, tenant.key, contact_id, {"position": "Before"})
    first_seq = wait_status(faults_db, first, "applied").seq

    # No files at all: the counter behind sequence numbers is gone with everything else.
    # (Only a PUT writes the counter; the worker, reconnecting at once, declares its queues again,
    # and the relay may still publish the first update's event, so the server is not empty.)
    client = stack.client()
    try:
        assert client.exists(names.SEQUENCE_KEY)
    finally:
        client.close()
    stack.redis.kill()
    stack.redis.wipe()
    stack.redis.start()
    client = stack.client()
    try:
        assert not client.exists(names.SEQUENCE_KEY)
    finally:
        client.close()
    wait_until(lambda: ready(base_url), timeout=30)

    later = put_async(base_url, tenant.key, contact_id, {"position": "After"})
    later_seq = wait_status(faults_db, later, "applied", timeout=60).seq
    assert later_seq > first_seq  # Redis's clock is the floor of every new number
    row = contact_row(faults_db, contact_id)
    assert row.position == "After"
    assert row.field_seqs["position"] == later_seq


def test_two_gateways_order_one_contacts_updates_as_they_accepted_them(
    fault_stack: Stack, faults_db: Database, tenant: Tenant
) -> None:
    stack = fault_stack
    urls = [stack.start_gateway("g1"), stack.start_gateway("g2")]
    stack.start_worker("w1")
    stack.wait_gateways()
    stack.wait_workers()
    # One client, each update sent once the previous one was accepted, alternating gateways:
    # each gets a higher number than the last, and the last one sent wins.
    one, other = tenant.contact_ids
    sent = [
        put_async(urls[i % 2], tenant.key, one, {"company": f"Company {i}"}) for i in range(30)
    ]
    # (Two pool processes may apply two of them in either order: the older then ends noop.)
    seqs = [wait_status(faults_db, u, "applied", "noop", timeout=60).seq for u in sent]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert contact_row(faults_db, one).company == "Company 29"

    # Four clients at once on the same contact, two on each gateway: the contact ends as a
    # replay of every accepted update in sequence order says.
    load = Load(urls, tenant.key, [other] * 4, total=200, rate=100, seed=3, max_seconds=60)
    load.start()
    load.join()
    redis = stack.client()
    try:
        ids = [s.update_id for s in load.log.accepted() if s.update_id]
        assert wait_drained(faults_db, redis, ids, timeout=60)
        initial: dict[str, Any] = {
            "name": "Contact 1", "email": None, "phone": None, "company": None,
            "position": None, "linkedin_url": None, "tags": [], "custom_fields": {},
        }
        report = check("two gateways", load.log, faults_db, redis, tenant.account_id,
                       {other: initial})
    finally:
        redis.close()
    assert report.accepted == 200
    assert report.violations() == []

