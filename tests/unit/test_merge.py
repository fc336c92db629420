"""Property tests for the pure merge rule (DESIGN §3): per field, last writer wins by sequence.

No services, no I/O. Hypothesis runs without an example database so no files are written.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contactsync.merge import (
    CUSTOM_FLOOR,
    CUSTOM_PREFIX,
    EXTERNAL_PREFIX,
    MAX_MARKERS,
    SCALAR_FIELDS,
    Change,
    ContactState,
    merge,
)
from contactsync.upserts import blank_state

FAST = settings(max_examples=200, deadline=None, database=None)
# Simpler properties need fewer examples; keeps the whole file at a few seconds.
QUICK = settings(max_examples=80, deadline=None, database=None)

Patch = dict[str, Any]
Update = tuple[int, Patch]

# Small alphabets so that values and keys collide often.
CF_KEYS = ("a", "b", "c")
TAG_POOL = ("x", "y", "z", "w")

short_text = st.text(alphabet="ab", max_size=2)
names = st.text(alphabet="ab", min_size=1, max_size=2)
nullable_text = st.none() | short_text
tag_lists = st.lists(st.sampled_from(TAG_POOL), max_size=3, unique=True)
cf_values = (
    st.none()
    | st.text(alphabet="ab", max_size=1)
    | st.integers(min_value=0, max_value=2)
    | st.booleans()
    | st.sampled_from([0.0, 1.0, 1.5])
)
cf_present_values = cf_values.filter(lambda v: v is not None)
custom_patches = st.dictionaries(st.sampled_from(CF_KEYS), cf_values, max_size=3)
EXT_SYSTEMS = ("hubspot", "salesforce")
ext_ids = st.sampled_from(["51", "52"])
external_patches = st.dictionaries(st.sampled_from(EXT_SYSTEMS), st.none() | ext_ids, max_size=2)

patches = st.fixed_dictionaries(
    {},
    optional={
        "name": names,
        "email": nullable_text,
        "phone": nullable_text,
        "company": nullable_text,
        "position": nullable_text,
        "linkedin_url": nullable_text,
        "tags": tag_lists,
        "custom_fields": custom_patches,
        "external_ids": external_patches,
    },
)


@st.composite
def updates(draw: st.DrawFn, min_size: int = 0, max_size: int = 6) -> list[Update]:
    """Updates with distinct sequence numbers, in no particular order."""
    ps = draw(st.lists(patches, min_size=min_size, max_size=max_size))
    seqs = draw(
        st.lists(
            st.integers(min_value=1, max_value=40),
            min_size=len(ps),
            max_size=len(ps),
            unique=True,
        )
    )
    return list(zip(seqs, ps, strict=True))


def _seq_keys() -> list[str]:
    return [
        *SCALAR_FIELDS, "tags", *(CUSTOM_PREFIX + k for k in CF_KEYS),
        *(EXTERNAL_PREFIX + s for s in EXT_SYSTEMS),
    ]


@st.composite
def loaded_states(draw: st.DrawFn) -> ContactState:
    """A state as loaded from storage: every scalar field present (None where empty)."""
    fields = {"name": draw(names)}
    for name in SCALAR_FIELDS[1:]:
        fields[name] = draw(nullable_text)
    tags = tuple(draw(tag_lists))
    custom = draw(st.dictionaries(st.sampled_from(CF_KEYS), cf_present_values, max_size=3))
    seqs = draw(
        st.dictionaries(
            st.sampled_from(_seq_keys()), st.integers(min_value=0, max_value=20), max_size=6
        )
    )
    external = draw(st.dictionaries(st.sampled_from(EXT_SYSTEMS), ext_ids, max_size=2))
    return ContactState(fields, tags, custom, seqs, external)


empty_or_loaded_states = st.just(ContactState()) | loaded_states()


def apply_all(state: ContactState, seq_patches: Sequence[Update]) -> ContactState:
    for seq, patch in seq_patches:
        state = merge(state, patch, seq).state
    return state


def reference(state: ContactState, ups: Sequence[Update]) -> ContactState:
    """Each update once, in ascending sequence order."""
    return apply_all(state, sorted(ups, key=lambda u: u[0]))


def typed(state: ContactState) -> tuple[Any, ...]:
    """The state with custom field values compared by JSON type too (1, 1.0, True differ)."""
    custom = {k: (type(v).__name__, v) for k, v in state.custom_fields.items()}
    return dict(state.fields), state.tags, custom, dict(state.field_seqs)


def assert_same_state(actual: ContactState, expected: ContactState) -> None:
    assert dict(actual.fields) == dict(expected.fields)
    assert actual.tags == expected.tags
    assert dict(actual.custom_fields) == dict(expected.custom_fields)
    # Python's == says 1 == 1.0 == True; JSON does not, so compare the types too.
    assert {k: type(v) for k, v in actual.custom_fields.items()} == {
        k: type(v) for k, v in expected.custom_fields.items()
    }
    assert dict(actual.field_seqs) == dict(expected.field_seqs)
    assert actual == expected


def expected_changes(before: ContactState, patch: Mapping[str, Any]) -> dict[str, Change]:
    """Oracle for `changes` when the patch's sequence is newer than every stored one."""
    out: dict[str, Change] = {}
    for name in SCALAR_FIELDS:
        if name in patch and before.fields.get(name) != patch[name]:
            out[name] = Change(before.fields.get(name), patch[name])
    if "tags" in patch and tuple(patch["tags"]) != before.tags:
        out["tags"] = Change(list(before.tags), list(patch["tags"]))
    for key, value in patch.get("custom_fields", {}).items():
        present = key in before.custom_fields
        old = before.custom_fields.get(key)
        if value is None:
            if present:
                out[CUSTOM_PREFIX + key] = Change(old, None)
        elif not present or type(old) is not type(value) or old != value:
            out[CUSTOM_PREFIX + key] = Change(old, value)
    for system, ext in patch.get("external_ids", {}).items():
        old_ext = before.external_ids.get(system)
        if old_ext != ext:
            out[EXTERNAL_PREFIX + system] = Change(old_ext, ext)
    return out


def max_seq(state: ContactState) -> int:
    return max(state.field_seqs.values(), default=0)


# --------------------------------------------------------------------------------------
# The core property: any order, any duplicates, same contact.
# --------------------------------------------------------------------------------------


@st.composite
def with_duplicates(draw: st.DrawFn, ups: list[Update]) -> list[Update]:
    """A multiset holding each update one or more times, in some permutation."""
    if not ups:
        return []
    extra = draw(st.lists(st.sampled_from(range(len(ups))), max_size=2 * len(ups)))
    multiset = ups + [ups[i] for i in extra]
    return draw(st.permutations(multiset))


@FAST
@given(start=loaded_states(), data=st.data(), ups=updates())
def test_any_permutation_with_duplicates_equals_sequence_order(
    start: ContactState, data: st.DataObject, ups: list[Update]
) -> None:
    delivered = data.draw(with_duplicates(ups))
    assert_same_state(apply_all(start, delivered), reference(start, ups))


@FAST
@given(start=loaded_states(), ups=updates(), rnd=st.randoms(use_true_random=False),
       copies=st.integers(min_value=1, max_value=3))
def test_shuffled_redeliveries_equal_sequence_order(
    start: ContactState, ups: list[Update], rnd: random.Random, copies: int
) -> None:
    delivered = ups * copies
    rnd.shuffle(delivered)
    assert_same_state(apply_all(start, delivered), reference(start, ups))


@FAST
@given(data=st.data(), ups=updates())
def test_from_empty_state_any_order_gives_the_same_state(
    data: st.DataObject, ups: list[Update]
) -> None:
    delivered = data.draw(with_duplicates(ups))
    actual = apply_all(ContactState(), delivered)
    expected = reference(ContactState(), ups)
    assert typed(actual) == typed(expected)


@FAST
@given(data=st.data(), ups=updates(min_size=1))
def test_upserts_creating_from_the_blank_state_in_any_order_give_the_same_state(
    data: st.DataObject, ups: list[Update]
) -> None:
    # Whichever upsert of a new identity arrives first creates the contact from the blank
    # state (`upserts.blank_state`); the others then merge into it as updates do.
    delivered = data.draw(with_duplicates(ups))
    actual = apply_all(blank_state(), delivered)
    assert typed(actual) == typed(reference(blank_state(), ups))


def test_empty_state_null_then_older_value_is_the_same_state_as_sequence_order() -> None:
    ups: list[Update] = [(1, {"email": "a@b.io"}), (2, {"email": None})]
    in_order = apply_all(ContactState(), ups)
    reversed_order = apply_all(ContactState(), list(reversed(ups)))
    assert in_order == reversed_order


@QUICK
@given(start=empty_or_loaded_states, ups=updates(min_size=1))
def test_final_values_come_from_the_highest_sequence_that_wrote_each_field(
    start: ContactState, ups: list[Update]
) -> None:
    end = reference(start, ups)
    for name in (*SCALAR_FIELDS, "tags"):
        writers = [seq for seq, p in ups if name in p]
        old_seq = start.field_seqs.get(name, -1)
        if writers and max(writers) > old_seq:
            assert end.field_seqs[name] == max(writers)
            winner = next(p for seq, p in ups if seq == max(writers))
            got = end.tags if name == "tags" else end.fields.get(name)
            assert got == (tuple(winner[name]) if name == "tags" else winner[name])
        else:
            assert end.field_seqs.get(name) == start.field_seqs.get(name)


# --------------------------------------------------------------------------------------
# Replays, stale writes, changes.
# --------------------------------------------------------------------------------------


@QUICK
@given(start=empty_or_loaded_states, patch=patches, seq=st.integers(min_value=1, max_value=40))
def test_applying_an_update_twice_in_a_row_changes_nothing_the_second_time(
    start: ContactState, patch: Patch, seq: int
) -> None:
    first = merge(start, patch, seq)
    second = merge(first.state, patch, seq)
    assert second.changes == {}
    assert_same_state(second.state, first.state)


@FAST
@given(start=loaded_states(), patch=patches)
def test_changes_name_exactly_the_fields_that_differ(start: ContactState, patch: Patch) -> None:
    result = merge(start, patch, max_seq(start) + 1)
    want = expected_changes(start, patch)
    assert result.changes == want
    for change in result.changes.values():
        assert change.old != change.new or type(change.old) is not type(change.new)
    # and the state moved exactly where the changes say it did
    for name in SCALAR_FIELDS:
        if name in want:
            assert result.state.fields[name] == want[name].new
        else:
            assert result.state.fields.get(name) == start.fields.get(name)
    assert list(result.state.tags) == (want["tags"].new if "tags" in want else list(start.tags))


@QUICK
@given(start=loaded_states(), patch=patches)
def test_every_field_sent_records_the_new_sequence(start: ContactState, patch: Patch) -> None:
    seq = max_seq(start) + 1
    seqs = merge(start, patch, seq).state.field_seqs
    sent = [n for n in (*SCALAR_FIELDS, "tags") if n in patch]
    sent += [CUSTOM_PREFIX + k for k in patch.get("custom_fields", {})]
    sent += [EXTERNAL_PREFIX + k for k in patch.get("external_ids", {})]
    for name in sent:
        assert seqs[name] == seq
    for name, old in start.field_seqs.items():
        if name not in sent:
            assert seqs[name] == old


@QUICK
@given(start=loaded_states(), patch=patches)
def test_a_patch_older_than_every_field_changes_nothing(start: ContactState, patch: Patch) -> None:
    keys = _seq_keys()
    guarded = ContactState(
        start.fields, start.tags, start.custom_fields, dict.fromkeys(keys, 50), start.external_ids
    )
    result = merge(guarded, patch, 49)
    assert result.changes == {}
    assert_same_state(result.state, guarded)


@st.composite
def noop_patches(draw: st.DrawFn, state: ContactState) -> Patch:
    """A patch that repeats the current values (and deletes only absent keys)."""
    patch: Patch = {}
    for name in SCALAR_FIELDS:
        if draw(st.booleans()):
            patch[name] = state.fields.get(name)
    if draw(st.booleans()):
        patch["tags"] = list(state.tags)
    if draw(st.booleans()):
        cf: dict[str, Any] = {}
        for key in CF_KEYS:
            if draw(st.booleans()):
                cf[key] = state.custom_fields.get(key)  # None for absent: deleting nothing
        patch["custom_fields"] = cf
    if draw(st.booleans()):
        patch["external_ids"] = {
            s: state.external_ids.get(s) for s in EXT_SYSTEMS if draw(st.booleans())
        }
    return patch


@QUICK
@given(start=loaded_states(), data=st.data())
def test_a_patch_with_the_current_values_is_a_noop(
    start: ContactState, data: st.DataObject
) -> None:
    patch = data.draw(noop_patches(start))
    result = merge(start, patch, max_seq(start) + 1)
    assert result.changes == {}
    assert dict(result.state.fields) == dict(start.fields)
    assert result.state.tags == start.tags
    assert dict(result.state.custom_fields) == dict(start.custom_fields)
    assert dict(result.state.external_ids) == dict(start.external_ids)


@QUICK
@given(start=empty_or_loaded_states, seq=st.integers(min_value=0, max_value=40))
def test_an_empty_patch_is_a_noop(start: ContactState, seq: int) -> None:
    result = merge(start, {}, seq)
    assert result.changes == {}
    assert_same_state(result.state, start)


@FAST
@given(start=loaded_states(), shape=patches, older=patches, gap=st.integers(1, 5))
def test_same_value_newer_sequence_still_blocks_an_older_different_value(
    start: ContactState, shape: Patch, older: Patch, gap: int
) -> None:
    # `echo` sends the fields `shape` sends, each with the value the contact already has
    echo: Patch = {n: start.fields.get(n) for n in SCALAR_FIELDS if n in shape}
    if "tags" in shape:
        echo["tags"] = list(start.tags)
    if "custom_fields" in shape:
        echo["custom_fields"] = {k: start.custom_fields.get(k) for k in shape["custom_fields"]}
    if "external_ids" in shape:
        echo["external_ids"] = {k: start.external_ids.get(k) for k in shape["external_ids"]}
    newer_seq = max_seq(start) + 10
    after_echo = merge(start, echo, newer_seq)
    assert after_echo.changes == {}
    late = merge(after_echo.state, older, newer_seq - gap)
    echoed = [n for n in (*SCALAR_FIELDS, "tags") if n in echo]
    echoed += [CUSTOM_PREFIX + k for k in echo.get("custom_fields", {})]
    echoed += [EXTERNAL_PREFIX + k for k in echo.get("external_ids", {})]
    for name in echoed:
        assert name not in late.changes
    for name in SCALAR_FIELDS:
        if name in echo:
            assert late.state.fields.get(name) == start.fields.get(name)
    if "tags" in echo:
        assert late.state.tags == start.tags
    for key in echo.get("custom_fields", {}):
        assert late.state.custom_fields.get(key) == start.custom_fields.get(key)
    for key in echo.get("external_ids", {}):
        assert late.state.external_ids.get(key) == start.external_ids.get(key)


# --------------------------------------------------------------------------------------
# Examples: the rules spelled out.
# --------------------------------------------------------------------------------------


def test_external_ids_merge_system_by_system() -> None:
    start = merge(ContactState(), {"external_ids": {"hubspot": "51", "salesforce": "x"}}, 1).state
    result = merge(start, {"external_ids": {"hubspot": None, "pipedrive": "7"}}, 2)
    assert dict(result.state.external_ids) == {"salesforce": "x", "pipedrive": "7"}
    assert result.changes == {
        "external_ids.hubspot": Change("51", None),
        "external_ids.pipedrive": Change(None, "7"),
    }
    # The removal is a marker: an older write of the system arriving late stays out.
    assert merge(result.state, {"external_ids": {"hubspot": "50"}}, 1).changes == {}


def test_tags_replace_not_merge() -> None:
    start = merge(ContactState(), {"tags": ["a", "b"]}, 1).state
    result = merge(start, {"tags": ["c"]}, 2)
    assert result.state.tags == ("c",)
    assert result.changes == {"tags": Change(["a", "b"], ["c"])}
    cleared = merge(result.state, {"tags": []}, 3)
    assert cleared.state.tags == ()
    assert cleared.changes == {"tags": Change(["c"], [])}


def test_tags_same_list_is_no_change_but_order_matters() -> None:
    start = merge(ContactState(), {"tags": ["a", "b"]}, 1).state
    assert merge(start, {"tags": ["a", "b"]}, 2).changes == {}
    assert merge(start, {"tags": ["b", "a"]}, 2).changes == {
        "tags": Change(["a", "b"], ["b", "a"])
    }


def test_custom_fields_merge_key_by_key() -> None:
    start = merge(ContactState(), {"custom_fields": {"a": 1, "b": 2}}, 1).state
    result = merge(start, {"custom_fields": {"b": None, "c": 3}}, 2)
    assert dict(result.state.custom_fields) == {"a": 1, "c": 3}
    assert result.changes == {
        "custom_fields.b": Change(2, None),
        "custom_fields.c": Change(None, 3),
    }
    # an empty object changes nothing and keeps everything
    assert merge(result.state, {"custom_fields": {}}, 3).changes == {}
    assert dict(merge(result.state, {"custom_fields": {}}, 3).state.custom_fields) == {
        "a": 1,
        "c": 3,
    }


def test_removing_an_absent_custom_key_is_no_change() -> None:
    result = merge(ContactState(), {"custom_fields": {"gone": None}}, 1)
    assert result.changes == {}
    assert dict(result.state.custom_fields) == {}
    assert result.state.field_seqs["custom_fields.gone"] == 1


def test_a_deletion_is_not_undone_by_an_older_set_arriving_after_it() -> None:
    state = merge(ContactState(), {"custom_fields": {"plan": "free"}}, 1).state
    state = merge(state, {"custom_fields": {"plan": None}}, 3).state
    assert "plan" not in state.custom_fields
    assert state.field_seqs["custom_fields.plan"] == 3  # tombstone
    late = merge(state, {"custom_fields": {"plan": "pro"}}, 2)
    assert late.changes == {}
    assert "plan" not in late.state.custom_fields
    assert late.state.field_seqs["custom_fields.plan"] == 3


def test_a_deletion_of_a_never_set_key_still_blocks_an_older_set() -> None:
    state = merge(ContactState(), {"custom_fields": {"plan": None}}, 5).state
    late = merge(state, {"custom_fields": {"plan": "pro"}}, 4)
    assert late.changes == {}
    assert "plan" not in late.state.custom_fields


def test_a_newer_set_after_a_deletion_brings_the_key_back() -> None:
    state = merge(ContactState(), {"custom_fields": {"plan": "free"}}, 1).state
    state = merge(state, {"custom_fields": {"plan": None}}, 2).state
    result = merge(state, {"custom_fields": {"plan": "pro"}}, 3)
    assert result.changes == {"custom_fields.plan": Change(None, "pro")}
    assert result.state.custom_fields["plan"] == "pro"


def test_an_older_write_after_a_newer_one_does_not_change_the_field() -> None:
    state = merge(ContactState(), {"position": "CTO"}, 5).state
    late = merge(state, {"position": "CEO", "company": "Acme"}, 4)
    assert late.state.fields["position"] == "CTO"
    assert late.state.field_seqs["position"] == 5
    # fields the newer update did not touch still take the older value
    assert late.changes == {"company": Change(None, "Acme")}
    assert late.state.field_seqs["company"] == 4


def test_a_scalar_field_written_once_per_sequence_only() -> None:
    state = merge(ContactState(), {"position": "CTO"}, 5).state
    assert merge(state, {"position": "CEO"}, 5).changes == {}
    assert merge(state, {"position": "CEO"}, 5).state.fields["position"] == "CTO"


def test_changes_name_each_changed_field_with_old_and_new() -> None:
    state = merge(
        ContactState(),
        {
            "name": "Ada",
            "position": "Engineer",
            "tags": ["a"],
            "custom_fields": {"plan": "free", "seats": 3},
        },
        1,
    ).state
    result = merge(
        state,
        {
            "name": "Ada",  # same: not a change
            "position": "CTO",
            "email": None,  # null over absent: not a change
            "tags": ["a", "b"],
            "custom_fields": {"plan": "pro", "seats": 3, "region": "eu"},
        },
        2,
    )
    assert result.changes == {
        "position": Change("Engineer", "CTO"),
        "tags": Change(["a"], ["a", "b"]),
        "custom_fields.plan": Change("free", "pro"),
        "custom_fields.region": Change(None, "eu"),
    }


def test_clearing_a_scalar_field_is_a_change_to_none() -> None:
    state = merge(ContactState(), {"phone": "+1 555 0100"}, 1).state
    result = merge(state, {"phone": None}, 2)
    assert result.changes == {"phone": Change("+1 555 0100", None)}
    assert result.state.fields.get("phone") is None


def test_same_value_newer_sequence_records_its_sequence() -> None:
    state = merge(ContactState(), {"position": "CTO", "custom_fields": {"plan": "pro"}}, 1).state
    echo = merge(state, {"position": "CTO", "custom_fields": {"plan": "pro"}}, 5)
    assert echo.changes == {}
    assert echo.state.field_seqs["position"] == 5
    assert echo.state.field_seqs["custom_fields.plan"] == 5
    late = merge(echo.state, {"position": "CEO", "custom_fields": {"plan": "free"}}, 3)
    assert late.changes == {}
    assert late.state.fields["position"] == "CTO"
    assert late.state.custom_fields["plan"] == "pro"


@pytest.mark.parametrize(
    ("old", "new"),
    [(1, True), (True, 1), (1, 1.0), (1.0, 1), (0, False), (False, 0), (0, 0.0), ("1", 1)],
    ids=["1-true", "true-1", "1-1.0", "1.0-1", "0-false", "false-0", "0-0.0", "str1-1"],
)
def test_custom_value_of_another_json_type_is_a_change(old: Any, new: Any) -> None:
    state = merge(ContactState(), {"custom_fields": {"k": old}}, 1).state
    result = merge(state, {"custom_fields": {"k": new}}, 2)
    assert result.changes == {"custom_fields.k": Change(old, new)}
    assert type(result.state.custom_fields["k"]) is type(new)
    assert result.state.custom_fields["k"] == new


@pytest.mark.parametrize("value", [1, 1.0, True, False, 0, "x", ""])
def test_custom_value_of_the_same_json_type_and_value_is_no_change(value: Any) -> None:
    state = merge(ContactState(), {"custom_fields": {"k": value}}, 1).state
    result = merge(state, {"custom_fields": {"k": value}}, 2)
    assert result.changes == {}
    assert type(result.state.custom_fields["k"]) is type(value)


def test_merge_does_not_mutate_its_input() -> None:
    state = merge(ContactState(), {"name": "A", "custom_fields": {"a": 1}, "tags": ["t"]}, 1).state
    snapshot = (dict(state.fields), state.tags, dict(state.custom_fields), dict(state.field_seqs))
    patch: Patch = {"name": "B", "custom_fields": {"a": None, "b": 2}, "tags": []}
    merge(state, patch, 2)
    assert snapshot == (
        dict(state.fields),
        state.tags,
        dict(state.custom_fields),
        dict(state.field_seqs),
    )
    assert patch == {"name": "B", "custom_fields": {"a": None, "b": 2}, "tags": []}


# --------------------------------------------------------------------------------------
# Deletion markers stay bounded (issue 11, item 3).
# --------------------------------------------------------------------------------------

SMALL_CAP = 2
MANY_KEYS = tuple(f"k{i}" for i in range(6))
# Mostly nulls, over more keys than the cap: markers overflow and the floor rises often.
null_heavy_patches = st.fixed_dictionaries(
    {},
    optional={
        "position": nullable_text,
        "tags": tag_lists,
        "custom_fields": st.dictionaries(
            st.sampled_from(MANY_KEYS), st.none() | st.sampled_from(["v", 1]), max_size=4
        ),
    },
)


@st.composite
def null_heavy_updates(draw: st.DrawFn) -> list[Update]:
    ps = draw(st.lists(null_heavy_patches, min_size=1, max_size=10))
    seqs = draw(st.lists(st.integers(1, 60), min_size=len(ps), max_size=len(ps), unique=True))
    return list(zip(seqs, ps, strict=True))


def markers(state: ContactState) -> list[str]:
    return [
        name for name in state.field_seqs
        if name.startswith(CUSTOM_PREFIX) and name[len(CUSTOM_PREFIX):] not in state.custom_fields
    ]


def floor_refuses(state: ContactState, seq: int, patch: Patch) -> bool:
    """Tell whether the floor, not a marker, would refuse a custom key of this update."""
    floor = state.field_seqs.get(CUSTOM_FLOOR)
    return floor is not None and any(
        key not in state.custom_fields and CUSTOM_PREFIX + key not in state.field_seqs
        and seq <= floor
        for key in patch.get("custom_fields", {})
    )


@FAST
@given(data=st.data(), ups=null_heavy_updates())
def test_with_markers_capped_any_order_is_exact_until_the_floor_refuses_a_late_write(
    data: st.DataObject, ups: list[Update]
) -> None:
    delivered = data.draw(with_duplicates(ups))
    expected = reference(ContactState(), ups)  # uncapped: the rule as if markers were free
    state, seen, refused = ContactState(), set[int](), False
    for seq, patch in delivered:
        if seq not in seen:
            refused |= floor_refuses(state, seq, patch)
            seen.add(seq)
        state = merge(state, patch, seq, max_markers=SMALL_CAP).state
        assert len(markers(state)) <= SMALL_CAP
    # Scalar fields and tags never depend on markers (CUSTOM_FLOOR prefixes every custom one).
    assert dict(state.fields) == dict(expected.fields)
    assert state.tags == expected.tags
    assert {k: v for k, v in state.field_seqs.items() if not k.startswith(CUSTOM_FLOOR)} == {
        k: v for k, v in expected.field_seqs.items() if not k.startswith(CUSTOM_FLOOR)
    }
    actual_cf = {k: (type(v), v) for k, v in state.custom_fields.items()}
    expected_cf = {k: (type(v), v) for k, v in expected.custom_fields.items()}
    if not refused:
        assert actual_cf == expected_cf
    else:  # a late write dropped at most: nothing restored, nothing sequence order lacks
        assert actual_cf.items() <= expected_cf.items()


@FAST
@given(data=st.data(), ups=null_heavy_updates())
def test_with_markers_capped_in_sequence_order_with_redeliveries_is_exact(
    data: st.DataObject, ups: list[Update]
) -> None:
    # Redeliveries in any order, each first delivery in sequence order: the floor only ever
    # passes sequences already applied, so it refuses nothing that matters.
    ordered = sorted(ups, key=lambda u: u[0])
    extra = data.draw(st.lists(st.sampled_from(ordered), max_size=2 * len(ordered)))
    delivered = list(ordered)
    for update in extra:
        position = data.draw(st.integers(delivered.index(update) + 1, len(delivered)))
        delivered.insert(position, update)
    capped = ContactState()
    for seq, patch in delivered:
        capped = merge(capped, patch, seq, max_markers=SMALL_CAP).state
    once = ContactState()
    for seq, patch in ordered:
        once = merge(once, patch, seq, max_markers=SMALL_CAP).state
    assert_same_state(capped, once)
    expected = reference(ContactState(), ups)
    assert typed(capped)[:3] == typed(expected)[:3]


def test_a_thousand_nulls_for_absent_keys_leave_the_sequences_bounded() -> None:
    state = merge(ContactState(), {"name": "Ada", "custom_fields": {"plan": "pro"}}, 1).state
    for seq in range(2, 12):  # ten updates, a hundred nulls each
        nulls = {f"gone-{seq}-{i}-{'x' * 50}": None for i in range(100)}
        result = merge(state, {"custom_fields": nulls}, seq)
        assert result.changes == {}
        state = result.state
    assert dict(state.custom_fields) == {"plan": "pro"}
    assert len(markers(state)) <= MAX_MARKERS
    assert len(state.field_seqs) <= MAX_MARKERS + 3  # name, plan, the floor
    assert state.field_seqs[CUSTOM_FLOOR] == 10


def test_past_the_cap_a_late_write_to_a_folded_key_is_refused_never_restored() -> None:
    state = merge(ContactState(), {"custom_fields": {"plan": "free"}}, 1).state
    state = merge(state, {"custom_fields": {"plan": None}}, 3).state
    state = merge(state, {"custom_fields": {"a": None, "b": None}}, 4, max_markers=2).state
    assert CUSTOM_PREFIX + "plan" not in state.field_seqs
    assert state.field_seqs[CUSTOM_FLOOR] == 3
    late = merge(state, {"custom_fields": {"plan": "pro"}}, 2, max_markers=2)
    assert late.changes == {}
    newer = merge(state, {"custom_fields": {"plan": "pro", "c": 1}}, 5, max_markers=2)
    assert newer.changes == {
        "custom_fields.plan": Change(None, "pro"), "custom_fields.c": Change(None, 1)
    }
    # present keys keep their own sequence: the floor never refuses a write to them
    assert merge(newer.state, {"custom_fields": {"plan": "x"}}, 6).state.custom_fields == {
        "plan": "x", "c": 1
    }
