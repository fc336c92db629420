"""Graceful shutdown: a stopping gateway answers what it holds; a stopping worker finishes its
tasks, gives back the messages it had not started, and nothing is applied twice."""

from __future__ import annotations

import signal
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import select

from contactsync.db import Database
from contactsync.models import Contact, UpdateRecord
from contactsync.schemas import MAX_BATCH_ITEMS
from contactsync.settings import Settings
from tests.conftest import make_contact, make_tenant
from tests.e2e.gateways import private_redis
from tests.e2e.ops import (
    contactsync,
    json_lines,
    own_services,
    stop_gently,
    wait_http_ok,
    wait_worker_ready,
)
from tests.support import free_port, service_env, wait_until

pytestmark = pytest.mark.slow  # SIGTERM under load


def _read_head(sock: socket.socket, data: bytes = b"") -> tuple[int, bytes, bytes]:
    """Read one response head; return its status, the head, and what came after it."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, rest


def _read_response(sock: socket.socket, data: bytes) -> tuple[int, bytes]:
    status, head, body = _read_head(sock, data)
    length = int(next(
        line.split(b":", 1)[1] for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return status, body


def test_sigterm_lets_the_gateway_answer_a_put_in_flight(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    tenant = make_tenant(db, "drain")
    contact_id = make_contact(db, tenant.account_id)
    with own_services(
        settings, tmp_path, concurrency=1, CONTACTSYNC_WORKER_METRICS_PORT="0",
        # On a busy machine the worker may take longer than the default 5 s wait: the point
        # here is the drain, so the PUT waits for its answer as long as shutdown allows.
        CONTACTSYNC_SYNC_WAIT_SECONDS="25",
    ) as services:
        gateway, port = services.gateway, int(services.gateway_url.rsplit(":", 1)[1])
        body = orjson.dumps({"position": "Drained"})
        head = (
            f"PUT /external/v1/contacts/{contact_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-API-Key: {tenant.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head)
            # "100 Continue" comes when the route starts reading the body: the request is in
            # the application, past authentication, when SIGTERM arrives.
            interim, _, rest = _read_head(sock)
            assert interim == 100, interim
            gateway.popen.terminate()  # SIGTERM, as `docker stop` sends
            wait_until(lambda: "Shutting down" in gateway.log(), timeout=10)
            time.sleep(0.3)
            assert gateway.popen.poll() is None, "the gateway quit with a request in flight"
            try:  # it takes no new connection meanwhile
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                raise AssertionError("a stopping gateway accepted a new connection")
            except ConnectionRefusedError:
                pass
            sock.sendall(body)
            status, answer = _read_response(sock, rest)
        assert status == 200, answer
        assert orjson.loads(answer)["data"]["position"] == "Drained"  # applied, then answered
        # uvicorn re-raises the signal once drained, so the exit reads as by SIGTERM.
        # It exits by itself within its graceful-shutdown budget (30 s) plus a margin.
        assert gateway.popen.wait(45) in (0, -signal.SIGTERM)


def test_sigterm_mid_drain_finishes_held_tasks_and_applies_everything_once(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    tenant = make_tenant(db, "warm")
    contacts = [make_contact(db, tenant.account_id) for _ in range(50)]
    # A full batch: the worker must still be draining when the test gets to stop it.
    items = [{"id": c, "position": f"v{i}"} for i in range(20) for c in contacts]
    assert len(items) == MAX_BATCH_ITEMS
    with private_redis(tmp_path) as redis_url:
        port = free_port()
        env = service_env(
            settings.database_url, redis_url, CONTACTSYNC_WORKER_METRICS_PORT="0",
            CONTACTSYNC_PUBLISH_MAX_BATCH="2",  # 500 task messages of 2 updates each
        )
        gateway = contactsync(["gateway", "--port", str(port)], env, tmp_path / "gateway.log")
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{url}/readyz")
            response = httpx.post(
                f"{url}/external/v1/contacts/batch/update", json={"updates": items},
                headers={"X-API-Key": tenant.key}, timeout=60,
            )
            assert response.status_code == 202, response.text
            update_ids = [r["update_id"] for r in response.json()["data"]["results"]]
            assert len(set(update_ids)) == len(items)

            first = contactsync(["worker", "--concurrency", "2"], env, tmp_path / "worker-1.log")
            wait_until(lambda: _records(db, update_ids), timeout=60, interval=0.02)
            assert stop_gently(first) == 0, first.log()[-3000:]
            assert "Warm shutdown" in first.log()
            done_first = _records(db, update_ids)
            assert 0 < len(done_first) < len(items), "the worker was not stopped mid-drain"
            assert _finished_lines(first.log()) == Counter(done_first.keys())  # nothing half-done

            second = contactsync(["worker", "--concurrency", "2"], env, tmp_path / "worker-2.log")
            try:
                wait_worker_ready(second)
                wait_until(
                    lambda: len(_records(db, update_ids)) == len(items), timeout=90,
                    interval=0.2,
                )
            finally:
                stop_gently(second)
        finally:
            gateway.stop()
    records = _records(db, update_ids)
    assert set(records) == set(update_ids)
    assert set(records.values()) <= {"applied", "noop"}, Counter(records.values())
    # Exactly once: every update finished in one delivery; none met its own earlier commit.
    finished = _finished_lines(first.log()) + _finished_lines(second.log())
    assert finished == Counter({u: 1 for u in update_ids})
    with db.reading() as session:  # the highest sequence wins, whatever the order applied
        positions = session.execute(
            select(Contact.position).where(Contact.id.in_(contacts))
        ).scalars().all()
    assert positions == ["v19"] * len(contacts)  # the last of each contact's updates


def _records(db: Database, update_ids: list[str]) -> dict[str, str]:
    query = select(UpdateRecord.update_id, UpdateRecord.status).where(
        UpdateRecord.update_id.in_(update_ids)
    )
    with db.reading() as session:
        rows = session.execute(query).all()
    return {update_id: status for update_id, status in rows}


def _finished_lines(log: str) -> Counter[str]:
    return Counter(
        str(e["update_id"]) for e in json_lines(log)
        if e.get("msg") == "update finished" and e.get("status") != "duplicate"
    ) + Counter(
        f"duplicate:{e['update_id']}" for e in json_lines(log)
        if e.get("msg") == "update finished" and e.get("status") == "duplicate"
    )
