"""The race that must not make a duplicate: many clients upserting one new email at once,
through three gateways and several worker processes on PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bench.processes import Process, worker_args
from contactsync.models import Contact
from tests.conftest import Stack
from tests.e2e.helpers import new_tenant
from tests.support import free_port, service_env, start_gateway, wait_for_worker

pytestmark = pytest.mark.slow  # racing threads, gateways and workers

CLIENTS = 16


def test_concurrent_upserts_of_one_new_email_make_exactly_one_contact(
    stack: Stack, tmp_path: Path
) -> None:
    if stack.settings.is_sqlite:
        pytest.skip("SQLite takes one writer at a time: no two transactions can race")
    tenant = new_tenant(stack, "race")
    env = service_env(stack.settings.database_url, stack.settings.redis_url)
    workers = [
        Process(worker_args(f"upsert{i}", concurrency=2), env, tmp_path / f"upsert{i}.log")
        for i in range(2)
    ]
    ports = [free_port() for _ in range(2)]
    gateways = [start_gateway(env, port, tmp_path / f"gateway{port}.log") for port in ports]
    urls = [stack.base_url, *(f"http://127.0.0.1:{port}" for port in ports)]
    try:
        for worker in workers:
            wait_for_worker(worker)
        start = threading.Barrier(CLIENTS)
        answers: dict[int, httpx.Response] = {}

        def upsert(index: int) -> None:
            email = "race@example.com" if index % 2 else "RACE@Example.com"
            body = {"match_on": "email", "email": email, "name": f"Racer {index}",
                    "custom_fields": {f"k{index}": index}}
            url, headers = urls[index % len(urls)], {"X-API-Key": tenant.key}
            with httpx.Client(base_url=url, headers=headers, timeout=15) as client:
                start.wait(30)
                answers[index] = client.post("/external/v1/contacts/upsert", json=body)

        threads = [threading.Thread(target=upsert, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        outcomes = [_outcome(stack, tenant.key, r) for r in answers.values()]
    finally:
        for process in (*gateways, *workers):
            process.stop()
    assert len(outcomes) == CLIENTS
    statuses = sorted(status for status, _ in outcomes)
    assert statuses == ["applied"] * (CLIENTS - 1) + ["created"], outcomes
    assert len({contact_id for _, contact_id in outcomes}) == 1, outcomes
    with stack.db.reading() as session:
        count = session.scalar(
            select(func.count()).select_from(Contact)
            .where(Contact.account_id == tenant.account_id)
        )
        merged = session.scalar(select(Contact).where(Contact.account_id == tenant.account_id))
        assert merged is not None
        custom = dict(merged.custom_fields)
    assert count == 1
    assert custom == {f"k{i}": i for i in range(CLIENTS)}  # every racer's write landed


def _outcome(stack: Stack, key: str, response: httpx.Response) -> tuple[str, str]:
    """Return (status, contact id) of an answer; a wait that ran out is read from its record."""
    body: dict[str, Any] = response.json()
    if response.status_code in (200, 201):
        status = "created" if response.status_code == 201 else "applied"
        return status, body["data"]["id"]
    assert response.status_code == 202, response.text
    record = stack.wait_finished(key, body["data"]["update_id"])
    return record["status"], record["contact_id"]
