"""Rate limits per key and the backlog limit, through real gateways, Redis and a worker."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from contactsync import names
from contactsync.keys import create_key
from contactsync.queue.wire import queue_list_key
from tests.conftest import Stack, Tenant, make_contact
from tests.e2e.gateways import extra_gateway
from tests.e2e.helpers import (
    ASYNC,
    api,
    assert_error,
    contact_path,
    get_contact,
    new_tenant,
    settled_events,
    update_records,
)
from tests.e2e.ops import samples, value
from tests.support import wait_until

pytestmark = pytest.mark.slow  # gateways of its own; waits for rate buckets and backlog refreshes

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def limited_tenant(stack: Stack, name: str, rate: int) -> Tenant:
    """Return a key of a new account limited to `rate` requests per second."""
    with stack.db.unit_of_work() as session:
        row, secret = create_key(
            session, name, ["contacts:read", "contacts:write"], rate_limit_per_second=rate
        )
        return Tenant(row.account_id, secret)


def only_on_sqlite(stack: Stack) -> None:
    # Limits live in Redis and the gateway alone: the database backend changes nothing here.
    if not stack.settings.is_sqlite:
        pytest.skip("backend-independent: run once, on the SQLite stack")


def assert_rate_headers(response: httpx.Response, limit: int) -> int:
    """Check the X-RateLimit-* headers; return Remaining."""
    for header in RATE_HEADERS:
        assert response.headers.get(header, "").isdigit(), (header, response.headers)
    assert int(response.headers["x-ratelimit-limit"]) == limit
    assert 0 <= int(response.headers["x-ratelimit-reset"]) <= 2  # a full bucket is 2 s away
    return int(response.headers["x-ratelimit-remaining"])


def test_a_key_over_its_rate_gets_429_and_the_request_changes_nothing(stack: Stack) -> None:
    tenant = limited_tenant(stack, "slow", rate=1)  # a bucket of 2, refilled at 1 a second
    contact_id = make_contact(stack.db, tenant.account_id, position="Intern")
    client = api(stack, tenant.key)
    answers = [
        client.put(contact_path(contact_id), json={"position": f"P{n}"}, headers=ASYNC)
        for n in range(4)
    ]
    assert [r.status_code for r in answers[:2]] == [202, 202], answers[0].text
    for response in answers[2:]:
        error = assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
        assert response.headers["retry-after"] == "1"
        assert error["details"] == {"retry_after": 1}
        assert assert_rate_headers(response, limit=2) == 0
    for response in answers[:2]:
        assert "retry-after" not in response.headers
        assert_rate_headers(response, limit=2)
    # Still over the limit, a body that is wrong too is answered 429 first.
    invalid = client.put(contact_path(contact_id), json={"position": 1}, headers=ASYNC)
    assert_error(invalid, 429, "RATE_LIMIT_EXCEEDED")
    # Refused before anything was read or queued: two updates, two records, two events.
    events = settled_events(stack)
    assert {e["changes"]["position"]["new"] for e in events} <= {"P0", "P1"}
    assert update_records(stack, contact_id) == 2
    time.sleep(1.05)  # one token back
    again = client.get(contact_path(contact_id))
    assert again.status_code == 200, again.text
    assert again.json()["data"]["position"] == "P1"


def test_every_request_spends_from_its_key_and_errors_carry_the_headers(stack: Stack) -> None:
    tenant = limited_tenant(stack, "acme", rate=10)  # slow refill: the counts stay exact
    contact_id = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    started = time.monotonic()
    answers = [
        client.get(contact_path(contact_id)),  # 200
        client.put(contact_path(contact_id), json={"position": "CTO"}, headers=ASYNC),  # 202
        client.put(contact_path(contact_id), json={"position": 1}),  # 400
        client.get(contact_path("cnt_000000000000")),  # 404
        client.delete(contact_path(contact_id)),  # 403: no contacts:delete
        client.get("/external/v1/contacts", params={"limit": 1000}),  # 400 from the query
        client.post("/external/v1/contacts", content=b"x", headers={"Content-Type": "text/x"}),
    ]
    took = time.monotonic() - started
    assert [r.status_code for r in answers] == [200, 202, 400, 404, 403, 400, 415]
    remaining = [assert_rate_headers(r, limit=20) for r in answers]
    # One token a request, less what came back meanwhile at 10 a second.
    assert remaining[0] == 19
    back = math.ceil(10 * took)
    assert 19 - len(answers) + 1 <= remaining[-1] <= 19 - len(answers) + 1 + back, remaining
    # Without a key there is no bucket to report on; health checks spend nothing either.
    anonymous = api(stack)
    for response in (anonymous.get(contact_path(contact_id)), anonymous.get("/healthz")):
        assert not any(h in response.headers for h in RATE_HEADERS), response.headers


def test_a_replayed_put_spends_its_token_too_and_is_refused_over_the_limit(
    stack: Stack,
) -> None:
    # The accept script spends nothing for a replay: the PUT spends its token on the way out.
    tenant = limited_tenant(stack, "replays", rate=1)  # a bucket of 2, refilled at 1 a second
    contact_id = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    headers = {"Idempotency-Key": "replayed-1", **ASYNC}
    answers = [
        client.put(contact_path(contact_id), json={"position": "CTO"}, headers=headers)
        for _ in range(3)
    ]
    first, replay, over = answers
    assert first.status_code == replay.status_code == 202, replay.text
    assert replay.json() == first.json()
    assert assert_rate_headers(first, limit=2) == 1
    assert assert_rate_headers(replay, limit=2) == 0
    assert_error(over, 429, "RATE_LIMIT_EXCEEDED")
    assert over.headers["retry-after"] == "1"
    assert assert_rate_headers(over, limit=2) == 0


def test_the_bucket_is_shared_by_every_gateway_process(stack: Stack, tmp_path: Path) -> None:
    only_on_sqlite(stack)
    tenant = limited_tenant(stack, "shared", rate=1)  # a bucket of 2, a token back a second
    contact_id = make_contact(stack.db, tenant.account_id)
    path = contact_path(contact_id)
    warm_up = {"X-API-Key": new_tenant(stack, "warm-up").key}
    with extra_gateway(stack, tmp_path, CONTACTSYNC_KEY_CACHE_SECONDS="0") as second:
        here = api(stack, tenant.key)
        there = httpx.Client(
            base_url=second.base_url, headers={"X-API-Key": tenant.key}, timeout=15
        )
        with there:
            # A new process's first request opens its connections: not on this bucket's clock.
            for client in (here, there):
                assert client.get(path, headers=warm_up).status_code == 404
            started = time.monotonic()
            statuses, answered = [], []
            for client in (here, there, here, there):
                statuses.append(client.get(path).status_code)
                answered.append(time.monotonic() - started)
    # Two tokens, one for each process's first request. Answered within a second of the
    # first request, a third or fourth found the shared bucket empty (a bucket per process
    # would have had one left for each).
    assert statuses[:2] == [200, 200]
    assert answered[2] < 1, answered  # else no token is sure to be missing
    within = [s for s, at in zip(statuses[2:], answered[2:], strict=True) if at < 1]
    assert within in ([429], [429, 429]), (statuses, answered)


def test_a_key_set_to_a_higher_rate_gets_a_bigger_bucket(stack: Stack) -> None:
    tenant = limited_tenant(stack, "fast", rate=500)
    contact_id = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    statuses = [client.get(contact_path(contact_id)).status_code for _ in range(210)]
    assert statuses == [200] * 210  # past the default bucket of 200
    assert_rate_headers(client.get(contact_path(contact_id)), limit=1000)


# --- backlog --------------------------------------------------------------------------


def backlog_seen(base_url: str) -> float:
    """Return the backlog a gateway saw at its last refresh (its own gauge)."""
    scraped = samples(httpx.get(f"{base_url}/metrics", timeout=10).text)
    return value(scraped, "contactsync_gateway_backlog_updates")


def backlog_env(limit: int) -> dict[str, str]:
    """A gateway's settings for a backlog of `limit` updates, refreshed every 50 ms."""
    return {"CONTACTSYNC_MAX_BACKLOG": str(limit), "CONTACTSYNC_MAX_ACCOUNT_BACKLOG": "100",
            "CONTACTSYNC_BACKLOG_REFRESH_SECONDS": "0.05"}


def test_over_the_backlog_new_updates_get_503_and_nothing_queued_is_dropped(
    stack: Stack, tmp_path: Path
) -> None:
    only_on_sqlite(stack)
    tenant = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, tenant.account_id, position="Intern")
    env = backlog_env(3)
    with extra_gateway(stack, tmp_path, idle=True, **env) as idle:
        client = httpx.Client(base_url=idle.base_url, headers={"X-API-Key": tenant.key})
        with client:
            path = contact_path(contact_id)
            accepted: list[str] = []

            def put_until_refused() -> httpx.Response | None:
                response = client.put(path, json={"position": f"P{len(accepted)}"}, headers=ASYNC)
                if response.status_code == 202:
                    accepted.append(response.json()["data"]["update_id"])
                    wait_until(lambda: backlog_seen(idle.base_url) == len(accepted), timeout=10)
                    return None
                return response

            refused = wait_until(put_until_refused, timeout=10, interval=0)
            error = assert_error(refused, 503, "SERVICE_UNAVAILABLE")
            assert refused.headers["retry-after"] == "5"
            assert error["details"] == {"retry_after": 5}
            assert len(accepted) == 4  # 3 is the limit; the 4th took the backlog over it
            batch = client.post(
                "/external/v1/contacts/batch/update",
                json={"updates": [{"id": contact_id, "position": "Batch"}]},
            )
            assert_error(batch, 503, "SERVICE_UNAVAILABLE")
            # Reads still answer, and everything accepted is still queued, in full.
            assert client.get(path).status_code == 200
            queued = idle.redis.lrange(queue_list_key(names.UPDATES_QUEUE), 0, -1)
            assert len(queued) == 4
            for update_id in accepted:
                assert idle.redis.exists(names.update_body_key(update_id))
            assert idle.redis.llen(queue_list_key(names.BULK_QUEUE)) == 0

            # Once workers drain the queues, updates are taken again.
            idle.redis.delete(queue_list_key(names.UPDATES_QUEUE))
            wait_until(lambda: backlog_seen(idle.base_url) == 0, timeout=10)
            again = client.put(path, json={"position": "Later"}, headers=ASYNC)
            assert again.status_code == 202, again.text
    assert get_contact(stack, tenant.key, contact_id)["position"] == "Intern"


def test_over_the_backlog_a_request_replayed_by_its_idempotency_key_gets_its_first_answer(
    stack: Stack, tmp_path: Path
) -> None:
    only_on_sqlite(stack)
    tenant = new_tenant(stack, "acme")
    contact_ids = [make_contact(stack.db, tenant.account_id) for _ in range(2)]
    env = backlog_env(1)
    with extra_gateway(stack, tmp_path, idle=True, **env) as idle:
        client = httpx.Client(base_url=idle.base_url, headers={"X-API-Key": tenant.key})
        with client:
            put_path = contact_path(contact_ids[0])
            put_headers = {**ASYNC, "Idempotency-Key": "put-1"}
            put = client.put(put_path, json={"company": "Acme"}, headers=put_headers)
            assert put.status_code == 202, put.text
            batch_body = {"updates": [{"id": c, "position": "Lead"} for c in contact_ids]}
            batch_headers = {"Idempotency-Key": "batch-1"}
            batch = client.post(
                "/external/v1/contacts/batch/update", json=batch_body, headers=batch_headers
            )
            assert batch.status_code == 202, batch.text
            # Two messages are over a limit of one: the gauge stops counting there.
            wait_until(lambda: backlog_seen(idle.base_url) >= 2, timeout=10)
            refused = client.put(put_path, json={"company": "Other"}, headers=ASYNC)
            assert_error(refused, 503, "SERVICE_UNAVAILABLE")

            again = client.put(put_path, json={"company": "Acme"}, headers=put_headers)
            assert again.status_code == 202, again.text
            assert again.json()["data"]["update_id"] == put.json()["data"]["update_id"]
            batch_again = client.post(
                "/external/v1/contacts/batch/update", json=batch_body, headers=batch_headers
            )
            assert batch_again.status_code == 202, batch_again.text
            assert batch_again.json() == batch.json()
            assert idle.redis.llen(queue_list_key(names.BULK_QUEUE)) == 1  # queued once


def test_the_backlog_counts_updates_not_messages(stack: Stack, tmp_path: Path) -> None:
    only_on_sqlite(stack)
    tenant = new_tenant(stack, "acme")
    contact_ids = [make_contact(stack.db, tenant.account_id) for _ in range(5)]
    env = backlog_env(4)
    with extra_gateway(stack, tmp_path, idle=True, **env) as idle:
        client = httpx.Client(base_url=idle.base_url, headers={"X-API-Key": tenant.key})
        with client:
            batch = client.post(
                "/external/v1/contacts/batch/update",
                json={"updates": [{"id": c, "company": "Acme"} for c in contact_ids]},
            )
            assert batch.status_code == 202, batch.text
            assert idle.redis.llen(queue_list_key(names.BULK_QUEUE)) == 1  # one message of 5
            wait_until(lambda: backlog_seen(idle.base_url) == 5, timeout=10)
            refused = client.put(contact_path(contact_ids[0]), json={"company": "X"})
            assert_error(refused, 503, "SERVICE_UNAVAILABLE")
    metrics = api(stack).get("/metrics").text
    assert "contactsync_gateway_backlog_updates" in metrics


def command_calls(redis: Redis) -> dict[str, int]:
    stats: dict[str, Any] = redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_the_limits_cost_one_evalsha_per_request_and_the_backlog_none(
    stack: Stack, tmp_path: Path
) -> None:
    only_on_sqlite(stack)
    tenant = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    requests = 60
    with extra_gateway(stack, tmp_path, idle=True) as idle:  # a Redis server of its own
        client = httpx.Client(base_url=idle.base_url, headers={"X-API-Key": tenant.key})
        with client:
            client.get(contact_path(contact_id))  # scripts loaded, connections made
            idle.redis.config_resetstat()
            started = time.monotonic()
            for _ in range(requests):
                assert client.get(contact_path(contact_id)).status_code == 200
            reads = command_calls(idle.redis)
            warm = client.put(contact_path(contact_id), json={"position": "W"}, headers=ASYNC)
            assert warm.status_code == 202  # the accept script loaded
            idle.redis.config_resetstat()
            for n in range(requests):
                put = client.put(contact_path(contact_id), json={"position": f"P{n}"},
                                 headers=ASYNC)
                assert put.status_code == 202
            writes = command_calls(idle.redis)
            elapsed = time.monotonic() - started
    # A read costs one EVALSHA (the bucket) and nothing else.
    # Background refreshes, and what a connection the pool opens says once (not per request).
    refreshes = {"llen", "lrange", "ping", "info", "config|resetstat", "hello", "client|setinfo"}
    in_the_script = {"hmget", "hset", "pexpire", "time"}  # counted, but no round trip
    assert reads.get("evalsha") == requests, reads
    assert all(reads.get(c, requests) == requests for c in in_the_script), reads
    others = {k: v for k, v in reads.items() if k not in refreshes | in_the_script | {"evalsha"}}
    assert others == {}, reads
    # A write adds the enqueue's own work, but the backlog check adds no round trip: queue
    # lengths are read on a timer (every 0.2 s), however many requests there are.
    assert writes.get("llen", 0) <= 2 * (elapsed / 0.2 + 2), (writes, elapsed)
    # One round trip a PUT: the accept script spends the token and queues the update.
    assert writes["evalsha"] == requests, writes
    assert "multi" not in writes and "exec" not in writes, writes
