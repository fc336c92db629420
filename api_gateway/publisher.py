"""Gather the updates a gateway process accepts close together into one flush.

Requests hand their submission over and wait for its outcome; one background task flushes
whatever has gathered (one Redis round trip, one task message per queue), so the cost per
update falls as the load rises, and a 2xx is sent only after the update is safely in Redis.

A flush of async updates waits for company only while requests keep arriving, at most
`publish_linger_ms` (1 ms): once the process has nothing else in hand it goes at once, since
a fixed wait would leave it idle with every client waiting on the same flush. A default-mode
PUT waits for a worker to apply its update, so a flush holding one lingers its full 10 ms,
and five times that while the workers are behind (task messages wait in the queue): its
update would wait behind those anyway, and fewer, larger messages are what lets the workers
catch up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from api_gateway.background import cancel_and_wait
from contactsync.queue.accept import AcceptOutcome, Enqueuer, Submission

log = logging.getLogger("contactsync.gateway")

BACKLOGGED_FACTOR = 5
QUIET_PASSES = 2  # event-loop passes without a new submission after which a flush goes


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
        self._pending: list[tuple[Submission, asyncio.Future[AcceptOutcome]]] = []
        self._continued: set[asyncio.Future[AcceptOutcome]] = set()  # not the last of a request's
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
        await cancel_and_wait(self._task)

    async def submit(self, submission: Submission) -> AcceptOutcome:
        """Queue one submission; return once it is in Redis (or raise why not)."""
        return await self._add(submission)

    async def submit_many(self, submissions: list[Submission]) -> list[AcceptOutcome]:
        """Queue several submissions in the same flush; return their outcomes.

        One flush, so that a batch meets its account's backlog limit whole: the accept script
        takes or refuses an account's updates of one flush together.
        """
        futures = [self._add(s) for s in submissions]
        self._continued.update(futures[:-1])
        return list(await asyncio.gather(*futures))

    def _add(self, submission: Submission) -> asyncio.Future[AcceptOutcome]:
        future: asyncio.Future[AcceptOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((submission, future))
        self._wake.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if any(submission.reply_to for submission, _ in self._pending):
                linger = self._wait_linger * (BACKLOGGED_FACTOR if self._backlogged() else 1)
                if linger and len(self._pending) < self._max_batch:
                    await asyncio.sleep(linger)
            elif self._linger:
                await self._gather_while_busy(self._linger)
            self._wake.clear()
            while self._pending:
                await self._flush()

    async def _gather_while_busy(self, most: float) -> None:
        """Wait for company while requests keep arriving, at most `most` seconds.

        Each pass lets the event loop run what it has ready: requests read meanwhile reach
        their submission within a pass or two. A pass that brings none means the process has
        nothing else in hand, and waiting longer would only idle it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + most
        quiet = 0
        while len(self._pending) < self._max_batch and loop.time() < deadline:
            before = len(self._pending)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._pending) == before else 0
            if quiet == QUIET_PASSES:
                return

    async def _flush(self) -> None:
        size = min(len(self._pending), self._max_batch * 4)
        while size < len(self._pending) and self._pending[size - 1][1] in self._continued:
            size += 1
        batch = self._pending[:size]
        del self._pending[:size]
        self._continued.difference_update(future for _, future in batch)
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
