"""The pure parts of webhook delivery: the retry schedule, the order key, the Flower row, the
signed headers (verified by the reference library)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from contactsync.settings import Settings
from contactsync.webhook_claims import Claim
from contactsync.webhook_fanout import order_key
from contactsync.webhook_secrets import new_secret
from contactsync.webhook_signing import Signer
from tasks.retry import backoff_seconds
from tasks.webhooks import argsrepr


def _schedule(settings: Settings) -> list[float]:
    """The longest wait before each retry, as the delivery task computes it (jitter at its
    top): enough retries to pass the retry window."""
    waits: list[float] = []
    attempts = 0
    while sum(waits) < settings.webhook_retry_for_seconds:
        ceiling = min(settings.webhook_retry_max_seconds,
                      settings.webhook_retry_base_seconds * 2.0 ** attempts)
        waits.append(ceiling)
        attempts += 1
    return waits


def test_retries_follow_the_design() -> None:
    settings = Settings()
    for attempts in range(40):
        wait = backoff_seconds(attempts, settings.webhook_retry_max_seconds,
                               base=settings.webhook_retry_base_seconds)
        assert wait <= settings.webhook_retry_max_seconds
        if attempts == 0:
            assert wait <= 5  # the first retry within 5 s
        if attempts == 1:
            assert wait <= 30  # the second within 30 s
    waits = _schedule(settings)
    assert waits[:3] == [5, 10, 20]
    assert max(waits) == 3600  # growing to an hour, no more
    assert sum(waits) >= 24 * 3600  # retried for at least a day


def test_events_without_a_sequence_order_by_their_time_on_the_same_scale() -> None:
    updated = {"sequence": 1_733_330_000_000_000, "occurred_at": "2024-12-04T16:33:20.000Z"}
    deleted = {"sequence": None, "occurred_at": "2024-12-04T16:33:21.000Z"}
    assert order_key(updated) == 1_733_330_000_000_000
    assert order_key(deleted) == 1_733_330_001_000_000  # microseconds, as sequences are


def test_the_flower_row_shows_ids_and_the_attempt_never_the_token() -> None:
    claim = Claim("whk_1", "tok3n", list(range(12)), [f"evt_{i}" for i in range(12)], 3)
    shown = argsrepr(claim)
    assert shown.startswith("[whk_1, 12 events: evt_0, evt_1,")
    assert shown.endswith(", +2 more, attempt 3]")
    assert "tok3n" not in shown


def test_both_secrets_sign_during_a_rotation_and_the_reference_library_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"id":"evt_1","type":"contact.updated"}'
    headers = Signer([new, old]).headers("evt_1", body, datetime.now(UTC))
    assert headers["webhook-id"] == "evt_1"
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"id": "evt_1", "type": "contact.updated"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + b" ", headers)
