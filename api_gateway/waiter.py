"""Wait for workers' answers without blocking the event loop or polling the database.

Each gateway process subscribes to its own results channel; an update that wants an answer
names that channel, and the worker publishes the outcome there right after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from api_gateway.background import cancel_and_wait
from contactsync.names import results_channel

log = logging.getLogger("contactsync.gateway")


class ResultWaiter:
    """Futures for the updates this process waits on, resolved from pub/sub."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.channel = results_channel(uuid.uuid4().hex)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="contactsync-results")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    def expect(self, update_id: str) -> asyncio.Future[dict[str, Any]]:
        """Register interest in an update before it is queued."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[update_id] = future
        return future

    def forget(self, update_id: str) -> None:
        self._waiting.pop(update_id, None)

    async def wait(self, update_id: str, timeout: float) -> dict[str, Any] | None:
        """Return the worker's answer for an expected update, or None when time runs out."""
        future = self._waiting.get(update_id)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None
        finally:
            self.forget(update_id)

    async def ready(self, timeout: float = 5) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        return self._subscribed.is_set()

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        self._resolve(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                self._subscribed.clear()
                log.warning("results subscription lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.5)

    def _resolve(self, data: bytes) -> None:
        for item in orjson.loads(data):
            future = self._waiting.get(item["update_id"])
            if future is not None and not future.done():
                future.set_result(item)
