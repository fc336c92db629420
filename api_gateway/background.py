"""Stop the gateway's background tasks (publisher, result listener, backlog gauge)."""

from __future__ import annotations

import asyncio
import contextlib

CANCEL_AGAIN_SECONDS = 0.5


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` until it has ended, then wait for it.

    One cancel() is a request, not a guarantee: redis-py can catch a cancellation that lands
    inside a command and carry on. A gateway process hung in its shutdown so, its backlog
    refresh still running minutes later (seen once in CI).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_SECONDS)
    with contextlib.suppress(asyncio.CancelledError):
        await task
