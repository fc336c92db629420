"""The race that must not make a duplicate: many clients giving one new email to different
contacts at once, through a real gateway and several worker processes on PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bench.processes import Process, worker_args
from contactsync.identities import stored_key
from contactsync.models import Contact, ContactIdentity
from tests.conftest import Stack, make_contact
from tests.e2e.helpers import contact_path, new_tenant
from tests.support import free_port, service_env, start_gateway, wait_for_worker

pytestmark = pytest.mark.slow  # racing threads, gateways and workers

CLIENTS = 16


def test_concurrent_puts_of_one_new_email_leave_exactly_one_holder(
    stack: Stack, tmp_path: Path
) -> None:
    if stack.settings.is_sqlite:
        pytest.skip("SQLite takes one writer at a time: no two transactions can race")
    tenant = new_tenant(stack, "race")
    contacts = [make_contact(stack.db, tenant.account_id) for _ in range(CLIENTS)]
    env = service_env(stack.settings.database_url, stack.settings.redis_url)
    # Beside the stack's gateway and worker: two more gateways (a gateway sends the updates it
    # accepts together as one task) and three workers of two processes each, so that
    # transactions overlap.
    workers = [
        Process(worker_args(f"race{i}", concurrency=2), env, tmp_path / f"race{i}.log")
        for i in range(3)
    ]
    ports = [free_port() for _ in range(2)]
    gateways = [
        start_gateway(env, port, tmp_path / f"gateway{port}.log") for port in ports
    ]
    urls = [stack.base_url, *(f"http://127.0.0.1:{port}" for port in ports)]
    try:
        for worker in workers:
            wait_for_worker(worker)
        start = threading.Barrier(CLIENTS)
        answers: dict[str, httpx.Response] = {}

        def put(index: int, contact_id: str) -> None:
            email = "race@example.com" if index % 2 else "RACE@Example.com"
            url, headers = urls[index % len(urls)], {"X-API-Key": tenant.key}
            with httpx.Client(base_url=url, headers=headers, timeout=15) as client:
                start.wait(30)
                answers[contact_id] = client.put(contact_path(contact_id), json={"email": email})

        threads = [
            threading.Thread(target=put, args=(i, c)) for i, c in enumerate(contacts)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        outcomes = {c: _outcome(stack, tenant.key, r) for c, r in answers.items()}
    finally:
        for process in (*gateways, *workers):
            process.stop()
    assert len(outcomes) == CLIENTS
    winners = [c for c, (status, _) in outcomes.items() if status == "applied"]
    assert len(winners) == 1, outcomes
    (winner,) = winners
    for contact_id, (status, holder) in outcomes.items():
        if contact_id != winner:
            assert (status, holder) == ("conflict", winner), outcomes
    with stack.db.reading() as session:
        holders = session.scalar(
            select(func.count()).select_from(ContactIdentity)
            .where(ContactIdentity.key == stored_key("email", "race@example.com"))
        )
        with_email = session.scalar(
            select(func.count()).select_from(Contact).where(Contact.email.is_not(None))
        )
    assert (holders, with_email) == (1, 1)


def _outcome(stack: Stack, key: str, response: httpx.Response) -> tuple[str, str | None]:
    """Return (status, holder named) of an answer; a wait that ran out is read from its
    record."""
    body: dict[str, Any] = response.json()
    if response.status_code == 200:
        return "applied", None
    if response.status_code == 409:
        return "conflict", body["error"]["details"]["contact_id"]
    assert response.status_code == 202, response.text
    record = stack.wait_finished(key, body["data"]["update_id"])
    details = (record["error"] or {}).get("details") or {}
    return record["status"], details.get("contact_id")
