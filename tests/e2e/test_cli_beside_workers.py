"""`contactsync keys create` while workers run on the embedded SQLite database."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from redis import Redis

from cli import main
from contactsync.db import Database
from contactsync.settings import get_settings
from tasks.relay import relay_once
from tests.conftest import Stack, make_contact
from tests.e2e.helpers import api, contact_path, new_tenant


@pytest.fixture
def cli_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATABASE_URL", stack.settings.database_url)
    monkeypatch.setenv("REDIS_URL", stack.settings.redis_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def second_relay(stack: Stack) -> Iterator[None]:
    """Run the outbox relay of a second worker, polling without pause, beside the stack's."""
    stop = threading.Event()
    db = Database(stack.settings)
    redis = Redis.from_url(stack.settings.redis_url)

    def run() -> None:
        while not stop.is_set():
            relay_once(db, redis, stack.settings)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)
    redis.close()
    db.dispose()


def test_keys_create_succeeds_beside_running_workers(
    stack: Stack, cli_env: None, second_relay: None, capsys: pytest.CaptureFixture[str]
) -> None:
    if not stack.settings.is_sqlite:
        pytest.skip("only SQLite takes one database-wide write lock")
    statuses = [
        main(["keys", "create", "--account", f"cli-{i}", "--permission", "contacts:read"])
        for i in range(40)
    ]
    captured = capsys.readouterr()
    assert statuses == [0] * 40, captured.err.splitlines()[:3]
    # The last key printed works.
    key = captured.out.strip().splitlines()[-1]
    tenant = new_tenant(stack, "cli-39")
    contact_id = make_contact(stack.db, tenant.account_id)
    assert api(stack, key).get(contact_path(contact_id)).status_code == 200
