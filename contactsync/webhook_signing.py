"""The headers of a delivery, signed as the Standard Webhooks specification says, by its
reference implementation (`standardwebhooks`): any receiver's library verifies them."""

from __future__ import annotations

from datetime import datetime

from standardwebhooks import Webhook


class Signer:
    """Signs for one endpoint with each of its current secrets (two during a rotation)."""

    def __init__(self, secrets: list[str]) -> None:
        self._webhooks = [Webhook(secret) for secret in secrets]

    def headers(self, event_id: str, payload: bytes, at: datetime) -> dict[str, str]:
        """Return the headers of one delivery: its id, its time, a signature per secret."""
        return {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(int(at.timestamp())),
            # The specification allows several space-separated signatures: a receiver that
            # has either secret verifies.
            "webhook-signature": " ".join(w.sign(event_id, at, payload) for w in self._webhooks),
        }
