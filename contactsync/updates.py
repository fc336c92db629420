"""An accepted update as it travels: stored in Redis by the gateway, read by a worker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

_MAX_REPR = 1000


@dataclass(frozen=True)
class AcceptedUpdate:
    """One accepted update: who sent it, for which contact, its sequence and its patch."""

    update_id: str
    account_id: str
    contact_id: str
    seq: int
    received_at: str
    patch: dict[str, Any]
    queue: str
    reply_to: str | None = None
    # An upsert's identities, tried in order; its `contact_id` is then the one it creates
    # (`ids.contact_id_for`) when none of them finds a contact.
    match_on: list[str] | None = None

    def to_json(self) -> bytes:
        return b'{"seq":%d,' % self.seq + self.body_tail()

    def body_tail(self) -> bytes:
        """Return the stored body but its leading `{"seq":N,`: the gateway's accept script
        splices in the sequence number, which only Redis knows."""
        body: dict[str, Any] = {
            "update_id": self.update_id, "account_id": self.account_id,
            "contact_id": self.contact_id, "received_at": self.received_at,
            "patch": self.patch, "queue": self.queue, "reply_to": self.reply_to,
        }
        if self.match_on is not None:  # absent otherwise: an update's body is as it was
            body["match_on"] = self.match_on
        return orjson.dumps(body)[1:]

    @classmethod
    def from_json(cls, raw: bytes | str) -> AcceptedUpdate:
        return cls(**orjson.loads(raw))

    def queued_record(self) -> dict[str, Any]:
        """Return the public update record of this update while it is queued."""
        # An upsert's contact is unknown until a worker has looked its identities up.
        contact_id = None if self.match_on is not None else self.contact_id
        return {
            "update_id": self.update_id, "contact_id": contact_id, "status": "queued",
            "received_at": self.received_at, "applied_at": None, "changed_fields": [],
            "error": None,
        }

    def changed_field_names(self) -> list[str]:
        """Return the names of the fields this update touches, never their values."""
        names = [n for n in self.patch if n not in ("custom_fields", "external_ids", "source")]
        names += [f"custom_fields.{key}" for key in self.patch.get("custom_fields", {})]
        names += [f"external_ids.{key}" for key in self.patch.get("external_ids", {})]
        return names


def task_argsrepr(updates: list[AcceptedUpdate]) -> str:
    """Describe a task's updates for Flower: ids and field names, never values."""
    parts = [f"{u.contact_id} {u.update_id} [{','.join(u.changed_field_names())}]" for u in updates]
    text = "; ".join(parts)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 1] + "…"


def owners_argument(owners: Sequence[tuple[str, str] | None]) -> dict[str, Any]:
    """Return a task's `owners` argument: per update id of its message, in order, the index of
    its account in `accounts` and its contact id (null when unknown). Compact, since a message's
    updates mostly share one account."""
    accounts: dict[str, int] = {}
    contacts = [
        None if owner is None else [accounts.setdefault(owner[0], len(accounts)), owner[1]]
        for owner in owners
    ]
    return {"accounts": list(accounts), "contacts": contacts}
