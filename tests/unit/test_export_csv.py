"""The CSV an export writes is what `import` reads: each contact back as an update of itself."""

from __future__ import annotations

import argparse
import csv
import io
from datetime import datetime
from typing import Any

import httpx
import pytest

from cli.errors import CliError
from cli.export_csv import CsvLayout
from cli.exporter import LIST_PATH, Pager, instant
from cli.import_rows import READ_ONLY, ImportFileError, Row, RowError, parse_csv, parse_jsonl

BASE = {"email": None, "phone": None, "company": None, "position": None, "linkedin_url": None,
        "source": "api", "created_at": "2024-01-15T10:30:00Z",
        "updated_at": "2024-01-16T10:30:00Z"}
CONTACTS: list[dict[str, Any]] = [
    {**BASE, "id": "cnt_1", "name": "Zoë, \"Z\"", "company": "Line\nbreak", "tags": ["a", "b c"],
     "custom_fields": {"plan": "pro", "n": 3, "ok": True, "pad": " x ", "e": "", "f": 0.25},
     "external_ids": {"hubspot": "123"}},
    {**BASE, "id": "cnt_2", "name": "Semi", "tags": ["x;y"],
     "custom_fields": {"plan": "free", "new": "só", " odd key ": 1, "odd\t": "v"}},
    {**BASE, "id": "cnt_3", "name": "Bare", "tags": [], "custom_fields": {}},
]


def written(contacts: list[dict[str, Any]]) -> str:
    layout = CsvLayout()
    for contact in contacts:
        layout.plan(contact)
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(layout.header())
    writer.writerows(layout.row(c) for c in contacts)
    return out.getvalue()


def test_the_header_is_plain_where_it_can_be_and_json_where_it_must() -> None:
    header = written(CONTACTS).splitlines()[0].split(",")
    assert header == [
        "id", "name", "email", "phone", "company", "position", "linkedin_url", "source",
        "json:tags", "created_at", "updated_at", "json:external_ids",
        "json:custom.e", "json:custom.f", "json:custom.n", "custom.new", "json:custom.ok",
        "json:custom.pad", "custom.plan", "json:custom_fields",
    ]


def test_every_contact_reads_back_as_an_update_of_itself() -> None:
    items = list(parse_csv(io.StringIO(written(CONTACTS), newline="")))
    assert all(isinstance(i, Row) for i in items), items
    expected = [
        {k: v for k, v in c.items()
         if k not in READ_ONLY and v is not None and v != {}}  # tags are in JSON: [] too
        for c in CONTACTS
    ]
    assert [i.update for i in items if isinstance(i, Row)] == expected


def test_jsonl_rows_leave_out_what_an_update_cannot_change() -> None:
    items = list(parse_jsonl(['{"id": "cnt_1", "name": "A", "source": "csv", '
                              '"created_at": "x", "updated_at": "y", "email": null}\n']))
    assert [i.update for i in items if isinstance(i, Row)] == [
        {"id": "cnt_1", "name": "A", "email": None},
    ]


def test_a_json_column_of_a_field_unknown_here_goes_as_it_is() -> None:
    items = list(parse_csv(io.StringIO('id,json:later\ncnt_1,"{""a"": [1]}"\n', newline="")))
    assert [i.update for i in items if isinstance(i, Row)] == [{"id": "cnt_1", "later": {"a": [1]}}]


def test_a_json_cell_that_is_not_json_is_a_row_error() -> None:
    items = list(parse_csv(io.StringIO("id,json:custom.n\ncnt_1,{nope\ncnt_2,NaN\n", newline="")))
    assert [(i.line, i.message) for i in items if isinstance(i, RowError)] == [
        (2, "column 2 is not a JSON value"), (3, "column 2 is not a JSON value"),
    ]


@pytest.mark.parametrize(("header", "message"), [
    ("json:id,name\n", "the id column is plain text"),
    ("id,custom.n,json:custom.n\n", "more than one column gives 'custom.n'"),
    ("id,json:\n", "unknown column ''"),
])
def test_bad_json_headers_are_refused_whole(header: str, message: str) -> None:
    with pytest.raises(ImportFileError, match=message):
        list(parse_csv(io.StringIO(header, newline="")))


# Paging against a fake server: the real gateway never answers 429 or 503 on demand.


def _page(contacts: list[dict[str, Any]], cursor: str | None) -> httpx.Response:
    pagination = {"page": None, "limit": 100, "total": 3, "total_pages": 1, "next_cursor": cursor}
    return httpx.Response(200, json={"success": True,
                                     "data": {"contacts": contacts, "pagination": pagination}})


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"success": False, "error": {"code": code, "message": "m", "details": {}}}
    return httpx.Response(status, json=body, headers=headers)


def _pager(answers: list[Any], waits: list[float], since: datetime | None = None,
           ) -> tuple[Pager, list[httpx.QueryParams]]:
    asked: list[httpx.QueryParams] = []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == LIST_PATH
        asked.append(request.url.params)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    client = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handle))
    return Pager(client, since, sleep=waits.append), asked


def test_pages_follow_the_cursor_and_429_503_wait_as_asked() -> None:
    waits: list[float] = []
    since = instant("2024-01-15T10:30:00+02:00")
    pager, asked = _pager([
        _page([{"id": "cnt_1"}, {"id": "cnt_2"}], "c1"),
        _error(429, "RATE_LIMIT_EXCEEDED", {"Retry-After": "2"}),
        _error(503, "SERVICE_UNAVAILABLE", {"Retry-After": "0.5"}),
        httpx.ConnectError("refused"),
        _page([{"id": "cnt_3"}], None),
    ], waits, since)
    assert [c["id"] for page in pager.pages() for c in page] == ["cnt_1", "cnt_2", "cnt_3"]
    assert waits[:2] == [2.0, 0.5] and 0 < waits[2] <= 0.5
    assert [p.get("cursor") for p in asked] == [None, "c1", "c1", "c1", "c1"]
    assert {p["updated_since"] for p in asked} == {"2024-01-15T10:30:00+02:00"}
    assert {(p["sort_by"], p["sort_order"], p["limit"]) for p in asked} == {
        ("created_at", "asc", "100"),
    }


@pytest.mark.parametrize(("status", "code"), [(401, "INVALID_API_KEY"),
                                              (403, "INSUFFICIENT_PERMISSIONS")])
def test_a_refused_key_stops_the_export_at_once(status: int, code: str) -> None:
    waits: list[float] = []
    pager, asked = _pager([_error(status, code)], waits)
    with pytest.raises(CliError, match=f"refused the key: HTTP {status} {code}"):
        list(pager.pages())
    assert len(asked) == 1 and waits == []


@pytest.mark.parametrize("text", ["2024-01-15", "2024-01-15T10:30:00", "yesterday", ""])
def test_updated_since_needs_an_rfc3339_instant(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid date-time"):
        instant(text)
