"""Stopping the gateway's background tasks (api_gateway/background.py)."""

from __future__ import annotations

import asyncio

from api_gateway.background import cancel_and_wait


def test_a_task_that_swallows_a_cancellation_is_still_stopped() -> None:
    swallowed = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)  # as redis-py can, inside a command

    async def run() -> tuple[asyncio.Task[None], bool]:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        # (asyncio.wait, not wait_for: on its timeout wait_for would cancel the task again.)
        stopping = asyncio.create_task(cancel_and_wait(task))
        done, _ = await asyncio.wait({stopping}, timeout=5)  # one cancel() waits forever
        stopping.cancel()
        return task, stopping in done

    task, stopped = asyncio.run(run())
    assert stopped and swallowed == [True] and task.cancelled()
