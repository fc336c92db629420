"""Upserts: which identities an item is matched on, and the contact it creates when none finds
one. Pure: no I/O (the look-up is `batch_apply`'s, in the transaction that writes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from contactsync.identities import EXTERNAL_FIELD_PREFIX, EXTERNAL_SYSTEM, stored_key
from contactsync.merge import SCALAR_FIELDS, ContactState

DEFAULT_SOURCE = "other"


def is_match_name(name: str) -> bool:
    """Tell whether `name` is an identity an upsert can be matched on."""
    if name in ("email", "linkedin_url"):
        return True
    system = name.removeprefix(EXTERNAL_FIELD_PREFIX)
    return system != name and EXTERNAL_SYSTEM.fullmatch(system) is not None


def match_value(name: str, patch: Mapping[str, Any]) -> str | None:
    """Return the value of identity `name` that `patch` sets, if it sets one."""
    if name.startswith(EXTERNAL_FIELD_PREFIX):
        value = (patch.get("external_ids") or {}).get(name.removeprefix(EXTERNAL_FIELD_PREFIX))
    else:
        value = patch.get(name)
    return value if isinstance(value, str) else None


def match_keys(match_on: Sequence[str], patch: Mapping[str, Any]) -> list[str]:
    """Return the stored keys of the identities in `match_on`, in order, that `patch` carries
    (names it does not carry, or that are no identity, are left out)."""
    keys = []
    for name in match_on:
        value = match_value(name, patch) if is_match_name(name) else None
        if value is not None:
            keys.append(stored_key(name, value))
    return keys


def blank_state() -> ContactState:
    """Return the state a created contact starts from: nothing set, no sequence."""
    return ContactState(fields=dict.fromkeys(SCALAR_FIELDS))


def blank_public(
    contact_id: str, patch: Mapping[str, Any], now: str
) -> dict[str, Any]:
    """Return the public shape of a contact about to be created by `patch`, before its merge."""
    source = patch.get("source")
    return {
        "id": contact_id, **dict.fromkeys(SCALAR_FIELDS), "source": source or DEFAULT_SOURCE,
        "tags": [], "custom_fields": {}, "external_ids": {}, "created_at": now, "updated_at": now,
    }


def created_row(
    contact_id: str, account_id: str, public: Mapping[str, Any], state: ContactState,
    created_at: datetime, updated_at: datetime,
) -> dict[str, Any]:
    """Return the contacts row of a contact an upsert made, as the batch left it."""
    return {
        "id": contact_id, "account_id": account_id, **state.fields, "source": public["source"],
        "tags": list(state.tags), "custom_fields": dict(state.custom_fields),
        "external_ids": dict(state.external_ids), "field_seqs": dict(state.field_seqs),
        "created_at": created_at, "updated_at": updated_at,
    }
