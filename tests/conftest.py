"""Fixtures: each test runs against SQLite and PostgreSQL, real Redis, real processes.

`CONTACTSYNC_TEST_BACKENDS=sqlite` (or `postgresql`) narrows the run. A missing Redis or
PostgreSQL skips on a laptop and fails in CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from redis import Redis
from sqlalchemy import delete

from contactsync.contacts import create_contact
from contactsync.db import Database
from contactsync.keys import create_key
from contactsync.migrate import upgrade
from contactsync.models import Base, OutboxEvent
from contactsync.settings import Settings
from tests.support import (
    Process,
    free_port,
    require_service,
    service_env,
    start_gateway,
    start_redis,
    start_worker,
    wait_for_worker,
    wait_until,
)
from tests.webhook_support import SECRET_KEY, webhook_env

PG_ADMIN_URL = os.environ.get(
    "CONTACTSYNC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test"
)
# Each run has its own database and, where redis-server is installed, its own Redis: runs
# side by side (two checkouts, a developer and CI) never consume each other's messages.
PG_TEST_DB = f"contactsync_test_{os.getpid()}"
REDIS_DB = {"sqlite": 14, "postgresql": 15}
BACKENDS = os.environ.get("CONTACTSYNC_TEST_BACKENDS", "sqlite,postgresql").split(",")
ALL_PERMISSIONS = ["contacts:read", "contacts:write", "contacts:delete"]


def _redis_ok(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return the Redis server of this run: CONTACTSYNC_TEST_REDIS, or a private one."""
    configured = os.environ.get("CONTACTSYNC_TEST_REDIS")
    binary = shutil.which("redis-server")
    if configured or binary is None:
        url = configured or "redis://127.0.0.1:6379"
        require_service("Redis", _redis_ok(url))
        yield url
        return
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    process = start_redis(data / "redis.log", port, data, timeout=10)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.stop(10)


def _postgres_url() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=2) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_TEST_DB,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_TEST_DB}"')
    except Exception:
        return None
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{PG_TEST_DB}"


def _drop_postgres_database() -> None:
    with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_TEST_DB}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def settings(
    backend: str, redis_base: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Settings for one backend, with the schema migrated from scratch."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'contactsync.db'}"
    else:
        pg = _postgres_url()
        require_service("PostgreSQL", pg is not None)
        assert pg is not None
        url = pg
    upgrade(url)
    yield Settings(database_url=url, redis_url=f"{redis_base}/{REDIS_DB[backend]}")
    if backend == "postgresql":
        _drop_postgres_database()


@pytest.fixture(scope="session")
def database(settings: Settings) -> Iterator[Database]:
    db = Database(settings)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    client.close()


def _busy(redis_client: Redis) -> int:
    """Count the task messages queued or held by a worker. (A stored body alone is no work: a
    worker leaves an unreadable one where it is.)"""
    busy = redis_client.llen("contacts.updates") + redis_client.llen("contacts.bulk")
    return int(busy + redis_client.hlen("unacked"))


def _quiet(redis_client: Redis, who: str, timeout: float = 15) -> None:
    """Wait until the stack's worker has finished its work; fail `who` if it has not: work left
    running would change the next test's data under it."""
    try:
        wait_until(lambda: not _busy(redis_client), timeout=timeout)
    except AssertionError:
        pytest.fail(f"{who} left work behind: {_busy(redis_client)} task messages still "
                    f"queued or held after {timeout:.0f} s")


_worker_running: list[bool] = []  # the session's worker is up: queued work drains


def _clean(database: Database, redis_client: Redis) -> None:
    if _worker_running:  # a test that used no stack may still have queued work for its worker
        _quiet(redis_client, "the test before this one")
    with database.unit_of_work() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    keys = [*redis_client.scan_iter("contactsync:*"), "contacts.updates", "contacts.bulk"]
    redis_client.delete(*keys)


@pytest.fixture
def db(database: Database, redis_client: Redis) -> Database:
    """The database, emptied (and Redis's contactsync keys dropped) before the test."""
    _clean(database, redis_client)
    return database


@dataclass
class Tenant:
    account_id: str
    key: str


def make_tenant(database: Database, name: str, permissions: list[str] | None = None) -> Tenant:
    with database.unit_of_work() as session:
        row, secret = create_key(session, name, permissions or ALL_PERMISSIONS)
        return Tenant(row.account_id, secret)


def make_contact(database: Database, account_id: str, **fields: Any) -> str:
    with database.unit_of_work() as session:
        contact_id = fields.pop("id", None)
        contact = create_contact(
            session, account_id, {"name": "John Doe", **fields}, contact_id=contact_id
        )
        # A fixture's contact arrives without its `contact.created`: the tests count the events
        # of what they do to it (tests/e2e/test_upsert_api.py checks that POST emits it).
        session.execute(delete(OutboxEvent).where(  # the contact is new: only its own event
            OutboxEvent.payload.contains('"type":"contact.created"'),
            OutboxEvent.payload.contains(f'"contact_id":"{contact.id}"'),
        ))
        return contact.id


@dataclass
class Stack:
    """A real gateway and worker against one backend."""

    base_url: str
    settings: Settings
    db: Database
    redis: Redis
    worker: Process
    gateway: Process

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=15)

    def wait_finished(self, key: str, update_id: str, timeout: float = 20) -> dict[str, Any]:
        """Return the update record once it is no longer queued."""
        with self.client(key) as client:

            def probe() -> dict[str, Any] | None:
                response = client.get(f"/external/v1/updates/{update_id}")
                data: dict[str, Any] = response.json()["data"]
                return data if data["status"] != "queued" else None

            return wait_until(probe, timeout)

    def events(self) -> list[dict[str, Any]]:
        import orjson

        entries = self.redis.xrange(self.settings.events_stream)
        return [orjson.loads(fields[b"event"]) for _, fields in entries]


@pytest.fixture(scope="session")
def running_stack(
    settings: Settings, database: Database, redis_client: Redis,
    tmp_path_factory: pytest.TempPathFactory, backend: str,
) -> Iterator[Stack]:
    logs: Path = tmp_path_factory.mktemp(f"logs-{backend}")
    env = service_env(
        settings.database_url, settings.redis_url,
        CONTACTSYNC_RELAY_INTERVAL_SECONDS="0.05", CONTACTSYNC_KEY_CACHE_SECONDS="0",
        CONTACTSYNC_MAX_RETRIES="2", CONTACTSYNC_RETRY_BACKOFF_MAX_SECONDS="1",
        **webhook_env(),
    )
    _clean(database, redis_client)
    worker = start_worker(env, logs / "worker.log")
    port = free_port()
    gateway = start_gateway(env, port, logs / "gateway.log")
    wait_for_worker(worker)
    _worker_running.append(True)
    # The stack's own settings: what the test reads (say, a sealed webhook secret) was written
    # under them.
    stack_settings = settings.model_copy(update={"webhook_secret_key": SecretStr(SECRET_KEY)})
    yield Stack(
        f"http://127.0.0.1:{port}", stack_settings, database, redis_client, worker, gateway
    )
    _worker_running.clear()
    gateway.stop()
    worker.stop()


@pytest.fixture
def stack(running_stack: Stack, db: Database) -> Iterator[Stack]:
    """The running stack, with the database and Redis emptied before the test; the test fails
    if its worker has not finished the test's work 15 s after it."""
    yield running_stack
    _quiet(running_stack.redis, "this test")
