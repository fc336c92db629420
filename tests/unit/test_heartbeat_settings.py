"""The heartbeat settings: a worker is taken for dead only after several missed heartbeats."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contactsync.settings import Settings
from worker.app import transport_options


def test_the_defaults_promise_recovery_within_fifteen_seconds() -> None:
    settings = Settings()
    # Found dead at most one heartbeat after `dead_after`; DESIGN §3 allows 15 s in all.
    assert settings.worker_dead_after_seconds + settings.worker_heartbeat_seconds <= 10
    options = transport_options(settings)
    assert options["worker_heartbeat"] == settings.worker_heartbeat_seconds
    assert options["worker_dead_after"] == settings.worker_dead_after_seconds
    assert options["visibility_timeout"] == 300  # not lowered to get there


def test_dead_after_fewer_than_three_heartbeats_is_refused() -> None:
    with pytest.raises(ValidationError, match="three times"):
        Settings(worker_heartbeat_seconds=2, worker_dead_after_seconds=5)
