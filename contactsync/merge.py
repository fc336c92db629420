"""The merge rule: per field, last writer wins by sequence. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCALAR_FIELDS = ("name", "email", "phone", "company", "position", "linkedin_url")
CUSTOM_PREFIX = "custom_fields."
# The floor of every custom key without a sequence of its own: no custom key can be named by
# it, since a key is at least one character after CUSTOM_PREFIX.
CUSTOM_FLOOR = "custom_fields"
# External ids merge like custom fields (DESIGN §2, "Identities and upsert"), with their own
# sequences, markers and floor.
EXTERNAL_PREFIX = "external_ids."
EXTERNAL_FLOOR = "external_ids"
_FLOORS = (CUSTOM_FLOOR, EXTERNAL_FLOOR)
MAX_MARKERS = 100  # deletion markers (sequences of absent custom keys) kept per contact


@dataclass(frozen=True)
class ContactState:
    """The mergeable part of a contact, with the sequence that last wrote each field.

    `field_seqs` keys are field names, `tags`, `custom_fields.<key>` for each custom field
    key and `external_ids.<system>` for each external id (merged the same way); a removed
    custom key keeps its sequence (a marker) so that an older update arriving later cannot
    bring it back. Markers are bounded: past `MAX_MARKERS`, the oldest are dropped and
    `CUSTOM_FLOOR` (`EXTERNAL_FLOOR`) rises to the newest sequence dropped; an absent key
    without a marker of its own takes that floor as its sequence (see `merge`).
    """

    fields: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    custom_fields: Mapping[str, Any] = field(default_factory=dict)
    field_seqs: Mapping[str, int] = field(default_factory=dict)
    external_ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    old: Any
    new: Any


@dataclass(frozen=True)
class MergeResult:
    state: ContactState
    changes: dict[str, Change]


def merge(
    state: ContactState, patch: Mapping[str, Any], seq: int, max_markers: int = MAX_MARKERS
) -> MergeResult:
    """Apply one update's patch at sequence `seq`: each field moves only if `seq` is newer.

    A null for a custom key (or an external id) is a marker whether or not the key was there:
    without it an older write of the key arriving later would bring the key back, which
    applying in sequence order would not. Markers past `max_markers` are folded into the
    floor, which keeps the rule exact for every update that arrives before the floor passes
    its sequence, that is before more than `max_markers` deletions at or past its sequence
    were applied to the contact. A write arriving later to an absent key without a marker is
    refused as stale: the rule may drop such a late write, but never restores a deleted value nor
    writes one that sequence order would not hold. Scalar fields and tags are exact always.
    tests/unit/test_merge.py holds both properties.
    """
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
    if patch.get("custom_fields"):
        _merge_keys(custom, patch["custom_fields"], CUSTOM_PREFIX, CUSTOM_FLOOR, seq, seqs, changes)
        _fold_markers(seqs, custom, CUSTOM_PREFIX, CUSTOM_FLOOR, max_markers)
    external = state.external_ids
    if patch.get("external_ids"):
        external = dict(external)
        _merge_keys(
            external, patch["external_ids"], EXTERNAL_PREFIX, EXTERNAL_FLOOR, seq, seqs, changes
        )
        _fold_markers(seqs, external, EXTERNAL_PREFIX, EXTERNAL_FLOOR, max_markers)
    return MergeResult(ContactState(fields, tags, custom, seqs, external), changes)


def _merge_keys(
    current: dict[str, Any], patch: Mapping[str, Any], prefix: str, floor_name: str, seq: int,
    seqs: dict[str, int], changes: dict[str, Change],
) -> None:
    """Merge one object key by key (JSON Merge Patch, one level), each key by its sequence."""
    floor = seqs.get(floor_name, -1)
    for key, value in patch.items():
        name = prefix + key
        if seq <= seqs.get(name, -1 if key in current else floor):
            continue
        seqs[name] = seq
        old = current.get(key)
        if value is None:
            if key in current:
                del current[key]
                changes[name] = Change(old, None)
        elif key not in current or _differs(old, value):
            current[key] = value
            changes[name] = Change(old, value)


def _fold_markers(
    seqs: dict[str, int], current: Mapping[str, Any], prefix: str, floor_name: str,
    max_markers: int,
) -> None:
    # The keyed sequences bound the markers from above, and cost no scan to count.
    others = sum(name in seqs for name in (*SCALAR_FIELDS, "tags", *_FLOORS))
    if len(seqs) - others <= max_markers:
        return
    markers = sorted(
        (s, name) for name, s in seqs.items()
        if name.startswith(prefix) and name[len(prefix):] not in current
    )
    if len(markers) <= max_markers:
        return
    floor = max(seqs.get(floor_name, -1), markers[-max_markers - 1][0])
    seqs[floor_name] = floor
    for marker_seq, name in markers:
        if marker_seq <= floor:  # the floor stands for it now
            del seqs[name]


def _differs(old: Any, new: Any) -> bool:
    # 1 == True and 1 == 1.0 in Python, yet they are different JSON values.
    return type(old) is not type(new) or old != new
