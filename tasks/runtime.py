"""Per-process resources of a worker: one database and one Redis client, made after fork."""

from __future__ import annotations

import os
from dataclasses import dataclass

from redis import Redis

from contactsync.db import Database
from contactsync.settings import Settings, get_settings
from tasks.retry import LOCK_TIMEOUT_MS


@dataclass
class Runtime:
    settings: Settings
    db: Database
    redis: Redis


_runtime: Runtime | None = None
_pid: int | None = None


def get_runtime() -> Runtime:
    """Return this process's resources, creating them on first use after a fork."""
    global _runtime, _pid
    if _runtime is None or _pid != os.getpid():
        settings = get_settings()
        _runtime = Runtime(
            settings=settings,
            # Without a bound, one row lock held elsewhere would stall this worker's queue.
            db=Database(settings, lock_timeout_ms=LOCK_TIMEOUT_MS),
            redis=Redis.from_url(
                settings.redis_url, socket_timeout=10, socket_connect_timeout=5,
                health_check_interval=30,
            ),
        )
        _pid = os.getpid()
    return _runtime
