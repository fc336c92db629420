"""The merge rule: per field, last writer wins by sequence. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCALAR_FIELDS = ("name", "email", "phone", "company", "position", "linkedin_url")
CUSTOM_PREFIX = "custom_fields."


@dataclass(frozen=True)
class ContactState:
    """The mergeable part of a contact, with the sequence that last wrote each field.

    `field_seqs` keys are field names, `tags`, and `custom_fields.<key>` for each custom
    field key; a removed custom key keeps its sequence (a tombstone) so that an older
    update arriving later cannot bring it back.
    """

    fields: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    custom_fields: Mapping[str, Any] = field(default_factory=dict)
    field_seqs: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    old: Any
    new: Any


@dataclass(frozen=True)
class MergeResult:
    state: ContactState
    changes: dict[str, Change]


def merge(state: ContactState, patch: Mapping[str, Any], seq: int) -> MergeResult:
    """Apply one update's patch at sequence `seq`: each field moves only if `seq` is newer."""
    fields = dict(state.fields)
    tags = state.tags
    custom = dict(state.custom_fields)
    seqs = dict(state.field_seqs)
    changes: dict[str, Change] = {}

    def wins(name: str) -> bool:
        if seq <= seqs.get(name, -1):
            return False
        seqs[name] = seq
        return True

    for name in SCALAR_FIELDS:
        if name in patch and wins(name):
            if fields.get(name) != patch[name]:
                changes[name] = Change(fields.get(name), patch[name])
            fields[name] = patch[name]
    if "tags" in patch and wins("tags"):
        new_tags = tuple(patch["tags"])
        if new_tags != tags:
            changes["tags"] = Change(list(tags), list(new_tags))
            tags = new_tags
    for key, value in (patch.get("custom_fields") or {}).items():
        name = CUSTOM_PREFIX + key
        if not wins(name):
            continue
        old = custom.get(key)
        if value is None:
            if key in custom:
                del custom[key]
                changes[name] = Change(old, None)
        elif key not in custom or _differs(old, value):
            custom[key] = value
            changes[name] = Change(old, value)
    return MergeResult(ContactState(fields, tags, custom, seqs), changes)


def _differs(old: Any, new: Any) -> bool:
    # 1 == True and 1 == 1.0 in Python, yet they are different JSON values.
    return type(old) is not type(new) or old != new
