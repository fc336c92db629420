"""Nothing personal or secret leaks: recognisable emails, phones and a recognisable key go
through the real gateway, worker and Flower, then none may appear in their logs, in the task
messages in Redis, in Flower's task API or in the metrics."""

from __future__ import annotations

import base64
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from contactsync import names
from contactsync.queue.wire import queue_list_key
from tests.conftest import Stack, make_contact
from tests.e2e.gateways import extra_gateway
from tests.e2e.helpers import ASYNC, api, contact_path, new_tenant, settled_events
from tests.support import Process, free_port, service_env, wait_until

pytestmark = pytest.mark.slow  # runs every path and reads every log, metric and Redis key

FLOWER_AUTH = ("flower-test", "flower-pass-" + secrets.token_hex(4))


def canaries() -> dict[str, Any]:
    """Return a contact's fields whose every value is recognisable, unique to this run."""
    tag = secrets.token_hex(5)
    digits = "".join(str(int(c, 16) % 10) for c in secrets.token_hex(4))
    return {
        "name": f"Canaryname {tag}",
        "email": f"canary.{tag}@leak-test.example.com",
        "phone": f"+1 555 {digits}",
        "company": f"Canarycorp {tag}",
        "position": f"Canary position {tag}",
        "linkedin_url": f"https://www.linkedin.com/in/canary-{tag}",
        "tags": [f"canarytag-{tag}"],
        "custom_fields": {"ssn": f"canary-ssn-{tag}"},
    }


def needles(fields: dict[str, Any], *keys: str) -> list[str]:
    """Return every string that must not appear: the values (emails and phones in the forms a
    log might print them) and the keys' secret parts."""
    found = [v for v in fields.values() if isinstance(v, str)]
    found += fields["tags"] + list(fields["custom_fields"].values())
    found += [fields["email"].split("@")[0], fields["phone"].replace(" ", "")]
    found += [k[len("csk_live_"):] if k.startswith("csk_live_") else k for k in keys]
    return found


def assert_absent(where: str, text: str | bytes, forbidden: list[str]) -> None:
    haystack = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    leaked = [n for n in forbidden if n in haystack]
    assert not leaked, f"{where} holds {leaked}"


@pytest.fixture
def flower(stack: Stack, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = service_env(
        stack.settings.database_url, stack.settings.redis_url,
        FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH),
    )
    args = [sys.executable, "-m", "celery", "-A", "worker.app", "flower", f"--port={port}",
            "--address=127.0.0.1"]
    process = Process(args, env, tmp_path / "flower.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/api/tasks", auth=FLOWER_AUTH).status_code == 200,
                   timeout=30)

        def receiving_events() -> bool:
            # Set from the worker's heartbeat events: Flower's event receiver is running, so
            # the tasks the test makes next cannot finish before Flower listens.
            metrics = httpx.get(f"{url}/metrics", auth=FLOWER_AUTH, timeout=5).text
            return any(line.startswith("flower_worker_online") and not line.endswith(" 0.0")
                       for line in metrics.splitlines())

        wait_until(receiving_events, timeout=30, interval=0.5)
        yield url
    finally:
        process.stop()


def send_everything(stack: Stack, key: str, contact_id: str, fields: dict[str, Any]) -> None:
    """Send the fields down every path that accepts them, and some that refuse them."""
    client = api(stack, key)
    path = contact_path(contact_id)
    created = client.post("/external/v1/contacts", json=fields)
    assert created.status_code == 201, created.text
    # The created contact holds the email: given to another, it is a conflict (its answer and
    # record name the field and the holder, never the value).
    assert client.put(path, json={"email": fields["email"]}).status_code == 409
    own = {**fields, "email": "own." + fields["email"],
           "linkedin_url": fields["linkedin_url"] + "-own"}
    assert client.put(path, json=own).status_code == 200
    assert client.put(path, json={"company": fields["company"] + " 2"}, headers=ASYNC).is_success
    batch = client.post("/external/v1/contacts/batch/update", json={"updates": [
        {"id": contact_id, **own, "position": fields["position"] + " 3"},
        {"id": contact_id, "email": fields["email"].replace("@", " at ")},  # refused item
    ]})
    assert batch.status_code == 202, batch.text
    bad = {"email": fields["email"] + "@@", "phone": "x" + fields["phone"]}
    refused = client.put(path, json=bad)
    assert refused.status_code == 400
    missing = client.put(contact_path("cnt_000000000000"), json=fields)
    assert missing.status_code == 404


def test_nothing_personal_or_secret_reaches_logs_flower_or_metrics(
    stack: Stack, flower: str
) -> None:
    tenant = new_tenant(stack, "acme")
    wrong_key = "csk_live_" + secrets.token_hex(20)  # a key someone mistyped: also a secret
    fields = canaries()
    contact_id = make_contact(stack.db, tenant.account_id)
    assert api(stack, wrong_key).get(contact_path(contact_id)).status_code == 401
    send_everything(stack, tenant.key, contact_id, fields)
    settled_events(stack)  # every update applied, every event relayed
    forbidden = needles(fields, tenant.key, wrong_key)

    def flower_tasks() -> dict[str, Any] | None:
        answer = httpx.get(f"{flower}/api/tasks", auth=FLOWER_AUTH, timeout=10)
        tasks: dict[str, Any] = answer.json()
        ours = [t for t in tasks.values() if t.get("name") == names.APPLY_TASK]
        return tasks if len(ours) >= 4 and all(t.get("state") for t in ours) else None

    tasks = wait_until(flower_tasks, timeout=60)  # Flower sees events late on a busy machine
    flower_text = orjson.dumps(tasks).decode()
    assert contact_id in flower_text  # the rows are useful: ids and field names...
    assert "custom_fields.ssn" in flower_text
    assert_absent("Flower's task API", flower_text, forbidden)  # ...and safe
    assert httpx.get(f"{flower}/api/tasks").status_code == 401  # and behind its password

    metrics = api(stack).get("/metrics")
    assert metrics.status_code == 200
    assert_absent("the gateway's metrics", metrics.text, forbidden)
    assert_absent("the gateway's log", stack.gateway.log(), forbidden)
    assert_absent("the worker's log", stack.worker.log(), forbidden)
    assert tenant.account_id not in stack.gateway.log()


def test_task_messages_carry_ids_only(stack: Stack, tmp_path: Path) -> None:
    tenant = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    fields = canaries()
    forbidden = needles(fields, tenant.key)
    with extra_gateway(stack, tmp_path, idle=True) as idle:  # no worker: messages stay queued
        client = httpx.Client(base_url=idle.base_url, headers={"X-API-Key": tenant.key})
        with client:
            put = client.put(contact_path(contact_id), json=fields, headers=ASYNC)
            assert put.status_code == 202, put.text
            batch = client.post(
                "/external/v1/contacts/batch/update",
                json={"updates": [{"id": contact_id, **fields}] * 3},
            )
            assert batch.status_code == 202, batch.text
        messages = [
            raw
            for queue in (names.UPDATES_QUEUE, names.BULK_QUEUE)
            for raw in idle.redis.lrange(queue_list_key(queue), 0, -1)
        ]
        assert len(messages) == 2
        for raw in messages:
            envelope = orjson.loads(raw)
            body = base64.b64decode(envelope["body"])
            assert_absent("a task message", raw, forbidden)
            assert_absent("a task message's body", body, forbidden)
            args, kwargs, _ = orjson.loads(body)
            assert all(i.startswith("upd_") for i in args[0])
            # Beside them, each update's owner, ids only (to record a lost body's update).
            owners = {"accounts": [tenant.account_id], "contacts": [[0, contact_id]] * len(args[0])}
            assert kwargs == {"owners": owners}
            assert contact_id in envelope["headers"]["argsrepr"]
        # The bodies themselves wait in Redis until applied: that is where the data is.
        update_id = put.json()["data"]["update_id"]
        stored = idle.redis.get(names.update_body_key(update_id))
        assert stored is not None and fields["email"].encode() in stored
