"""Metrics: the gateway's /metrics under `--workers 2`, and the worker's own port under prefork.

Both are scraped after a known set of updates, and the counts must add up across processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from contactsync.db import Database
from contactsync.models import OutboxEvent
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from tests.conftest import make_contact, make_tenant
from tests.e2e.ops import Services, own_services, samples, value
from tests.support import wait_until
from worker.metrics_server import OutboxCollector

pytestmark = pytest.mark.slow  # services of its own, to count from zero

ASYNC = {"Prefer": "respond-async"}
PUT_ROUTE = "/external/v1/contacts/{contact_id}"


@pytest.fixture
def services(
    settings: Settings, db: Database, tmp_path: Path
) -> Iterator[Services]:
    with own_services(
        settings, tmp_path, gateway_workers=2, concurrency=2,
        CONTACTSYNC_MAX_RETRIES="5", CONTACTSYNC_RETRY_BACKOFF_MAX_SECONDS="1",
    ) as running:
        yield running


def _finished(client: httpx.Client, update_id: str) -> dict[str, object] | None:
    data: dict[str, object] = client.get(f"/external/v1/updates/{update_id}").json()["data"]
    return data if data["status"] != "queued" else None


def test_gateway_and_worker_metrics_count_every_update(
    services: Services, db: Database, backend: str
) -> None:
    tenant = make_tenant(db, "metrics")
    with httpx.Client(
        base_url=services.gateway_url, headers={"X-API-Key": tenant.key}, timeout=20
    ) as client:
        _check_counts(services, db, client, tenant.account_id, backend)


def _check_counts(
    services: Services, db: Database, client: httpx.Client, account_id: str, backend: str
) -> None:
    one = make_contact(db, account_id, email="metrics.person@example.com")
    two = make_contact(db, account_id, custom_fields={"plan": "pro"})
    path = f"/external/v1/contacts/{one}"
    assert client.put(path, json={"position": "CTO"}).status_code == 200  # applied
    assert client.put(path, json={"position": "CTO"}).status_code == 200  # noop
    missing = client.put("/external/v1/contacts/cnt_000000000000", json={"company": "X"})
    assert missing.status_code == 404  # not_found
    too_many = {f"k{i}": i for i in range(100)}  # 101 custom fields with "plan": failed
    assert client.put(f"/external/v1/contacts/{two}", json={"custom_fields": too_many}
                      ).status_code == 400
    queued = [
        client.put(path, json={"tags": [f"t{i}"]}, headers=ASYNC).json()["data"]["update_id"]
        for i in range(5)
    ]
    retried = 0
    if backend == "postgresql":
        retried = _one_update_retried_behind_a_row_lock(services, db, client, two)
    # Two gateway processes and two pool processes: the tags updates may apply out of order,
    # and one overtaken by a later one ends a no-op. Their records say which.
    statuses = [
        wait_until(partial(_finished, client, update_id), timeout=30)["status"]
        for update_id in queued
    ]
    assert set(statuses) <= {"applied", "noop"}, statuses
    applied = 1 + statuses.count("applied") + (1 if retried else 0)

    finished = 4 + len(queued) + retried  # every update sent
    # A record is committed a moment before its counters move: scrape once every one has.
    worker = wait_until(partial(_scraped_once, services.metrics_url,
                                "contactsync_worker_lag_seconds_count", finished), timeout=20)
    assert value(worker, "contactsync_worker_updates_total", status="applied") == applied
    assert value(worker, "contactsync_worker_updates_total", status="noop") == (
        1 + statuses.count("noop"))
    assert value(worker, "contactsync_worker_updates_total", status="not_found") == 1
    assert value(worker, "contactsync_worker_updates_total", status="failed") == 1
    assert value(worker, "contactsync_worker_updates_total", status="duplicate") == 0
    assert value(worker, "contactsync_worker_updates_retried_total") == retried
    assert value(worker, "contactsync_worker_lag_seconds_count") == finished
    assert value(worker, "contactsync_worker_lag_seconds_bucket", le="+Inf") == finished
    assert value(worker, "contactsync_worker_updates_total", queue="contacts.updates") == finished
    tasks = value(worker, "contactsync_worker_apply_seconds_count")
    assert 1 <= tasks <= finished + retried
    assert ("contactsync_worker_outbox_backlog", frozenset()) in worker

    # Fresh connections spread over both gateway processes; the counts are their sum.
    for _ in range(20):
        assert httpx.get(f"{services.gateway_url}/healthz").status_code == 200
    requests = "contactsync_gateway_requests_total"
    # (A request is counted just after its response is sent.)
    gateway = wait_until(partial(_scraped_once, f"{services.gateway_url}/metrics", requests,
                                 20, route="/healthz"), timeout=20)
    assert value(gateway, requests, route="/healthz", method="GET", status="200") == 20
    assert value(gateway, requests, route=PUT_ROUTE, method="PUT", status="200") == 2
    assert value(gateway, requests, route=PUT_ROUTE, method="PUT", status="202") == 5 + (
        1 if retried else 0)
    assert value(gateway, requests, route=PUT_ROUTE, method="PUT", status="404") == 1
    assert value(gateway, requests, route=PUT_ROUTE, method="PUT", status="400") == 1
    waits = "contactsync_gateway_wait_outcomes_total"
    assert value(gateway, waits, outcome="applied") == 1
    assert value(gateway, waits, outcome="noop") == 1
    assert value(gateway, waits, outcome="not_found") == 1
    assert value(gateway, "contactsync_gateway_enqueue_seconds_count") == finished
    scraped = httpx.get(f"{services.gateway_url}/metrics").text
    assert one not in scraped and "example.com" not in scraped


def _scraped_once(
    url: str, name: str, count: float, **labels: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    """Scrape `url`; return the samples once `name` (with `labels`) has reached `count`."""
    scraped = samples(httpx.get(url, timeout=10).text)
    return scraped if value(scraped, name, **labels) >= count else None


def _one_update_retried_behind_a_row_lock(
    services: Services, db: Database, client: httpx.Client, contact_id: str
) -> int:
    """Hold the contact's row lock past the worker's lock timeout; return the updates queued."""
    worker_url = services.metrics_url
    with db.engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT 1 FROM contacts WHERE id = :id FOR UPDATE"), {"id": contact_id})
        response = client.put(
            f"/external/v1/contacts/{contact_id}", json={"company": "Locked"}, headers=ASYNC
        )
        assert response.status_code == 202

        def retried() -> bool:
            scraped = samples(httpx.get(worker_url).text)
            return value(scraped, "contactsync_worker_updates_retried_total") >= 1

        wait_until(retried, timeout=30, interval=0.2)
    update_id = response.json()["data"]["update_id"]
    record = wait_until(lambda: _finished(client, update_id), timeout=30)
    assert record["status"] == "applied", record
    return 1


def test_the_outbox_backlog_counts_unpublished_events(tmp_path: Path) -> None:
    from contactsync.migrate import upgrade

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'outbox.db'}")
    upgrade(settings.database_url)
    collector = OutboxCollector(settings)
    assert [m.samples[0].value for m in collector.collect()] == [0]
    db = Database(settings)
    with db.unit_of_work() as session:
        session.add_all(
            OutboxEvent(event_id=f"evt_{i}", payload="{}", created_at=utcnow()) for i in range(3)
        )
    db.dispose()
    (family,) = collector.collect()
    assert family.name == "contactsync_worker_outbox_backlog"
    assert family.samples[0].value == 3
    broken = OutboxCollector(Settings(database_url=f"sqlite:///{tmp_path / 'no' / 'x.db'}"))
    assert list(broken.collect()) == []  # a database that does not answer: no series, no 0


def test_a_killed_services_sample_directory_is_removed_by_the_next_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    from contactsync.metrics_dir import sweep_stale

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"contactsync-worker-metrics-{int(gone.stdout)}-abc"
    alive = tmp_path / f"contactsync-gateway-metrics-{os.getpid()}-def"
    other = tmp_path / "contactsync-unrelated"
    for path in (dead, alive, other):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"x")
    sweep_stale(tmp_path)
    assert not dead.exists() and alive.exists() and other.exists()
