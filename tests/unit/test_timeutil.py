"""The one text form of a time: ISO 8601, milliseconds truncated, `Z`."""

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from contactsync.timeutil import isoformat, parse_iso


@pytest.mark.parametrize(("value", "text"), [
    (datetime(2024, 1, 15, 10, 30, tzinfo=UTC), "2024-01-15T10:30:00.000Z"),
    (datetime(2024, 1, 15, 10, 30, 0, 999_999, tzinfo=UTC), "2024-01-15T10:30:00.999Z"),
    # PostgreSQL's driver hands back its session's zone, not `datetime.UTC`.
    (datetime(2024, 1, 15, 10, 30, 0, 1_500, tzinfo=ZoneInfo("Etc/UTC")),
     "2024-01-15T10:30:00.001Z"),
    (datetime(2024, 1, 15, 5, 30, tzinfo=timezone(timedelta(hours=-5))),
     "2024-01-15T10:30:00.000Z"),
    (datetime(2024, 1, 15, 10, 30), "2024-01-15T10:30:00.000Z"),  # SQLite's naive UTC
])
def test_isoformat_writes_utc_with_milliseconds(value: datetime, text: str) -> None:
    assert isoformat(value) == text


def test_isoformat_reads_back_to_the_millisecond() -> None:
    value = datetime(2031, 7, 4, 23, 59, 59, 123_456, tzinfo=UTC)
    assert parse_iso(isoformat(value)) == value.replace(microsecond=123_000)
