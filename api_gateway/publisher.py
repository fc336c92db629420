"""Gather the updates a gateway process accepts within a few milliseconds into one flush.

Requests hand their submission over and wait for its outcome; one background task flushes
whatever has gathered (two Redis round trips, one task message per queue), so the cost per
update falls as the load rises, and a 2xx is sent only after the update is safely in Redis.

A default-mode PUT waits for a worker to apply its update, so a flush holding one lingers
longer (10 ms rather than 2 by default), and five times that while the workers are behind (task
messages wait in the queue): its update would wait behind those anyway, and fewer, larger
messages are what lets the workers catch up. Flushes of async updates only keep the short
linger: their clients wait for nothing but Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from contactsync.enqueue import Enqueuer, Outcome, Submission

log = logging.getLogger("contactsync.gateway")

BACKLOGGED_FACTOR = 5


class Publisher:
    """Coalesce submissions from concurrent requests into batched flushes."""

    def __init__(
        self, enqueuer: Enqueuer, *, linger_seconds: float, max_batch: int,
        wait_linger_seconds: float | None = None, backlogged: Callable[[], bool] | None = None,
    ) -> None:
        self._enqueuer = enqueuer
        self._linger = linger_seconds
        self._wait_linger = linger_seconds if wait_linger_seconds is None else wait_linger_seconds
        self._backlogged = backlogged or (lambda: False)
        self._max_batch = max_batch
        self._pending: list[tuple[Submission, asyncio.Future[Outcome]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="contactsync-publisher")

    async def stop(self) -> None:
        """Flush what is pending, then stop."""
        if self._task is None:
            return
        while self._pending:
            await self._flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def submit(self, submission: Submission) -> Outcome:
        """Queue one submission; return once it is in Redis (or raise why not)."""
        return await self._add(submission)

    async def submit_many(self, submissions: list[Submission]) -> list[Outcome]:
        """Queue several submissions in the same flush when they fit; return their outcomes."""
        return list(await asyncio.gather(*(self._add(s) for s in submissions)))

    def _add(self, submission: Submission) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((submission, future))
        self._wake.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            linger = self._linger
            if any(submission.reply_to for submission, _ in self._pending):
                linger = self._wait_linger * (BACKLOGGED_FACTOR if self._backlogged() else 1)
            if linger and len(self._pending) < self._max_batch:
                await asyncio.sleep(linger)
            self._wake.clear()
            while self._pending:
                await self._flush()

    async def _flush(self) -> None:
        batch = self._pending[: self._max_batch * 4]
        del self._pending[: len(batch)]
        try:
            outcomes = await self._enqueuer.accept([s for s, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
