"""The `owners` argument of an apply task: built compactly, read back defensively."""

from __future__ import annotations

from typing import Any

import pytest

from contactsync.updates import owners_argument
from tasks.lost_bodies import owners_of


def test_owners_round_trip_and_follow_a_subset() -> None:
    ids = ["upd_a", "upd_b", "upd_c"]
    pairs = [("acc_1", "cnt_a"), ("acc_2", "cnt_b"), ("acc_1", "cnt_c")]
    argument = owners_argument(pairs)
    assert argument == {"accounts": ["acc_1", "acc_2"],
                        "contacts": [[0, "cnt_a"], [1, "cnt_b"], [0, "cnt_c"]]}
    owned = owners_of(ids, argument)
    assert owned == dict(zip(ids, pairs, strict=True))
    # A retry names fewer updates: their owners go with them, in their order.
    subset = ["upd_c", "upd_x"]
    assert owners_of(subset, owners_argument([owned.get(i) for i in subset])) == {
        "upd_c": ("acc_1", "cnt_c"),
    }


@pytest.mark.parametrize(
    "owners",
    [
        None, [], {"accounts": ["acc_1"]}, {"accounts": "acc_1", "contacts": [[0, "c"]]},
        {"accounts": ["acc_1"], "contacts": [[0, "c"], [0, "d"]]},  # not one per id
    ],
)
def test_malformed_owners_name_nobody(owners: Any) -> None:
    assert owners_of(["upd_a"], owners) == {}


def test_a_malformed_entry_names_nobody_and_the_others_still_count() -> None:
    owners = {"accounts": ["acc_1", "acc\n"], "contacts": [
        [0, "cnt_a"], [5, "cnt_b"], [True, "cnt_c"], [1, "cnt_d"], [0, 7], None,
    ]}
    ids = [f"upd_{n}" for n in "abcdef"]
    assert owners_of(ids, owners) == {"upd_a": ("acc_1", "cnt_a")}
