"""The order a worker asks its queues for the next message: single updates first, bulk never
starved.

kombu's Redis transport pops from the first of the queues it lists that holds a message
(BRPOP). Listed always in the worker's order (kombu's `priority` cycle), a worker took a
`contacts.bulk` message only when no single update waited: while single updates kept every
worker busy, one account's PUTs held another's batches back for as long as they lasted. Here,
after `RUN` messages in a row from the first queue, the next ask lists the others first once:
when both wait, bulk gets at least one message in `RUN + 1`, and a single update that
arrives waits at most for a worker's next ask. When bulk waits for nothing, it changes
nothing: the ask still returns the first queue's message.

kombu calls `update` with the queues consumed, `consume` before each BRPOP and `rotate` with
the queue each message came from (kombu.utils.scheduling's cycle protocol; check after a
kombu upgrade, beside worker/transport.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from kombu.utils.scheduling import priority_cycle

from contactsync import names

RUN = 4  # messages in a row from the first queue before the others are asked first once


class SinglesFirst(priority_cycle):
    """kombu's priority cycle, with the others asked first after `RUN` messages of the first.

    The first is `contacts.updates` whatever order the worker was given its queues in (or a
    consumer was cancelled and added again), so that bulk can never come first unnoticed.
    """

    def __init__(self, it: list[str] | None = None) -> None:
        super().__init__(it)  # type: ignore[no-untyped-call]
        self.in_a_row = 0

    def update(self, it: Iterable[str]) -> None:
        queues = list(it)
        self.items[:] = sorted(queues, key=lambda queue: queue != names.UPDATES_QUEUE)

    def consume(self, n: int) -> list[str]:
        queues: list[str] = self.items[:n]
        if self.in_a_row >= RUN and len(queues) > 1:
            return queues[1:] + queues[:1]
        return queues

    def rotate(self, last_used: str) -> None:
        first = self.items[0] if self.items else None
        self.in_a_row = self.in_a_row + 1 if last_used == first else 0
