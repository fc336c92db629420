"""Fixtures of the fault tests: the faults database, and one private stack per test.

These tests need the machine's PostgreSQL and a `redis-server` binary (never the machine's
Redis: each test runs its own, and kills it at will). Missing, they skip on a laptop and fail
in CI.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.faults.services import (
    RedisServer,
    Stack,
    Tenant,
    drop_database,
    empty_tables,
    fresh_database,
    postgres_available,
    seed,
)
from contactsync.db import Database
from contactsync.settings import Settings
from tests.support import require_service


@pytest.fixture(scope="session")
def faults_database_url() -> Iterator[str]:
    """A database of this session's own on the machine's PostgreSQL, dropped at its end."""
    require_service("redis-server", shutil.which("redis-server") is not None)
    require_service("PostgreSQL", postgres_available())
    url = fresh_database()
    yield url
    drop_database(url)


@pytest.fixture
def faults_db(faults_database_url: str) -> Iterator[Database]:
    """The faults database, emptied before the test."""
    db = Database(Settings(database_url=faults_database_url))
    empty_tables(db)
    yield db
    db.dispose()


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def fault_stack(
    faults_database_url: str, faults_db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """A private Redis (append-only file on) with no processes yet; all stopped afterwards."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:60]
    log_dir = tmp_path / name
    log_dir.mkdir()
    redis = RedisServer(log_dir / "redis-data", log_dir)
    stack = Stack(faults_database_url, redis, log_dir)
    try:
        redis.start()
        yield stack
    finally:
        stack.close()


@pytest.fixture
def tenant(faults_db: Database) -> Tenant:
    return seed(faults_db, 2)
