"""Gateways started beside the stack's own: a second process, or one with no worker behind it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from tests.conftest import Stack
from tests.support import Process, free_port, service_env, start_gateway, start_redis


@dataclass
class Extra:
    base_url: str
    process: Process
    redis: Redis


@contextmanager
def private_redis(log_dir: Path) -> Iterator[str]:
    """Run a Redis server of this test's own (no worker reads it); yield its URL."""
    port = free_port()
    server = start_redis(log_dir / f"redis-{port}.log", port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


@contextmanager
def extra_gateway(
    stack: Stack, log_dir: Path, *, idle: bool = False, **env: str
) -> Iterator[Extra]:
    """Run one more gateway on the stack's database.

    `idle`: on a private Redis server that no worker reads (queued work stays put); otherwise
    on the stack's Redis (its worker applies what this gateway queues, and buckets are shared).
    """
    with contextlib.ExitStack() as resources:
        redis_url = stack.settings.redis_url
        if idle:
            redis_url = resources.enter_context(private_redis(log_dir))
        redis = Redis.from_url(redis_url)
        resources.callback(redis.close)
        port = free_port()
        process = start_gateway(
            service_env(stack.settings.database_url, redis_url, **env), port,
            log_dir / f"gateway-{port}.log",
        )
        resources.callback(process.stop)
        yield Extra(f"http://127.0.0.1:{port}", process, redis)
