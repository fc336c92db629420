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

    async def run() -> asyncio.Task[None]:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait(task), timeout=5)  # one cancel() hangs here
        return task

    task = asyncio.run(run())
    assert swallowed == [True] and task.cancelled()
