"""A list cursor is client input: whatever it holds, the answer is 200 or 400, never a 500."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contactsync.keys import create_key
from contactsync.schemas import CONTACT_ID_PATTERN
from tests.conftest import ALL_PERMISSIONS, Stack, make_contact
from tests.e2e.helpers import api, assert_bad_fields

pytestmark = pytest.mark.slow  # 150 generated cursors against a real gateway

LIST = "/external/v1/contacts"
FUZZ = settings(
    max_examples=150, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(created_at: Any, contact_id: Any, descending: Any, **extra: Any) -> str:
    data = {"c": created_at, "i": contact_id, "d": descending, **extra}
    return _b64(json.dumps(data).encode())


VALID_ID = st.from_regex(r"cnt_[a-z0-9]{12}", fullmatch=True)
UTC_TIME = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(datetime.isoformat)
BAD_ID = st.one_of(
    st.text(), st.text(min_size=65), st.binary().map(lambda b: b.decode("latin-1")),
    VALID_ID.map(lambda i: i[:6] + "\x00" + i[6:]), VALID_ID.map(lambda i: i + "\n"),
    VALID_ID.map(lambda i: i * 20), st.integers(), st.none(), st.lists(st.integers()),
    st.dictionaries(st.text(), st.integers()),
).filter(lambda i: not (isinstance(i, str) and CONTACT_ID_PATTERN.fullmatch(i)))
BAD_TIME = st.one_of(
    st.text(), st.integers(), st.floats(allow_nan=False), st.none(),
    st.datetimes().map(datetime.isoformat),  # naive
    st.sampled_from(["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2024-02-30T00:00Z",
                     "2024-01-01T00:00:00\x00+00:00", "+275760-09-13T00:00:00Z", "2024"]),
)
BAD_DIRECTION = st.one_of(st.integers(), st.text(), st.none(), st.floats(allow_nan=False))
JUNK = st.one_of(
    st.text(max_size=600),
    st.binary(max_size=400).map(_b64),
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                 lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                 max_leaves=20).map(lambda v: _b64(json.dumps(v).encode())),
)
BAD_PIECE = st.one_of(
    st.builds(_cursor, BAD_TIME, VALID_ID, st.booleans()),
    st.builds(_cursor, UTC_TIME, BAD_ID, st.booleans()),
    st.builds(_cursor, UTC_TIME, VALID_ID, BAD_DIRECTION),
    st.builds(lambda c: _cursor(*c, x=1), st.tuples(UTC_TIME, VALID_ID, st.booleans())),
)


def _fuzz_key(stack: Stack) -> str:
    with stack.db.unit_of_work() as session:
        row, key = create_key(session, "fuzz", ALL_PERMISSIONS, rate_limit_per_second=100_000)
        account_id = row.account_id
    for n in range(3):
        make_contact(stack.db, account_id, email=f"c{n}@example.com")
    return key


def _list(client: httpx.Client, cursor: str) -> httpx.Response:
    return client.get(LIST, params={"cursor": cursor, "limit": 1})


def test_a_malformed_cursor_is_400_and_never_500(stack: Stack) -> None:
    client = api(stack, _fuzz_key(stack))
    nul = _cursor("2024-01-01T00:00:00+00:00", "cnt_abc\x00def45678", True)
    assert_bad_fields(_list(client, nul), "cursor")  # PostgreSQL answered this one 500

    @FUZZ
    @given(JUNK)
    def junk(cursor: str) -> None:
        response = _list(client, cursor)
        if response.status_code != 200:  # junk may by chance be a valid cursor: then 200
            assert_bad_fields(response, "cursor")

    @FUZZ
    @given(BAD_PIECE)
    def bad_piece(cursor: str) -> None:
        assert_bad_fields(_list(client, cursor), "cursor")

    junk()
    bad_piece()


def test_a_well_formed_cursor_is_200(stack: Stack) -> None:
    client = api(stack, _fuzz_key(stack))
    made = client.get(LIST, params={"limit": 1}).json()["data"]["pagination"]["next_cursor"]
    assert _list(client, made).status_code == 200

    @FUZZ
    @given(UTC_TIME, VALID_ID, st.booleans())
    def well_formed(created_at: str, contact_id: str, descending: bool) -> None:
        response = _list(client, _cursor(created_at, contact_id, descending))
        assert response.status_code == 200, response.text

    well_formed()
