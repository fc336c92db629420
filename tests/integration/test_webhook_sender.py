"""The sender against a real receiver process: a batch ends within twice the timeout however
slowly the receiver answers, and what it did not start is handed back, not attempted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.webhook_claims import Outgoing
from contactsync.webhook_signing import Signer
from tasks.webhook_sender import Sender, Sent
from tests.webhook_support import Receiver

pytestmark = pytest.mark.slow  # a receiver of its own, and waits out its timeouts


@pytest.fixture()
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    got = Receiver(tmp_path)
    yield got
    got.stop()


def _outgoing(count: int) -> list[Outgoing]:
    return [Outgoing(i, f"evt_{i}", 0, utcnow(), f'{{"id": "evt_{i}"}}') for i in range(count)]


def test_a_batch_to_a_slow_receiver_sends_what_fits_in_the_timeout(receiver: Receiver) -> None:
    settings = Settings(webhook_timeout_seconds=0.5, webhook_connections=1)
    sender = Sender(settings)
    deliveries = _outgoing(5)
    try:
        sent, unsent = _send_slowly(sender, receiver, deliveries)
    finally:
        sender.close()
    assert [s.delivery for s in sent] == deliveries[:1]
    assert sent[0].status_code is None and sent[0].error == "no answer within 0.5 s"
    assert unsent == deliveries[1:]


def _send_slowly(sender: Sender, receiver: Receiver,
                 deliveries: list[Outgoing]) -> tuple[list[Sent], list[Outgoing]]:
    # One connection, an answer after 5 s: the first request times out at 0.5 s, and the
    # others' turn comes after the batch's time to start requests is over.
    return sender.send(receiver.url("/sleep/5"), Signer(["whsec_" + "A" * 32]), deliveries)


def test_a_batch_goes_out_whole_on_few_connections(receiver: Receiver) -> None:
    sender = Sender(Settings(webhook_connections=2))
    deliveries = _outgoing(20)
    try:
        sent, unsent = sender.send(receiver.url("/hook/few"), Signer(["whsec_" + "A" * 32]),
                                   deliveries)
    finally:
        sender.close()
    assert unsent == [] and [s.status_code for s in sent] == [204] * 20
    assert sorted(r["headers"]["webhook-id"] for r in receiver.requests("/hook/few")) == sorted(
        d.event_id for d in deliveries)
