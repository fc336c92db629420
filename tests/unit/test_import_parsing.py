"""`contactsync import` without services: rows from CSV and JSON lines, batching, retries."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.errors import CliError
from cli.import_rows import (
    ImportFileError,
    Item,
    Row,
    RowError,
    detect_format,
    parse_csv,
    parse_jsonl,
    read_items,
    split_tags,
)
from cli.importer import BATCH_PATH, Sender, chunks, retry_after


def csv_items(text: str) -> list[Item]:
    return list(parse_csv(io.StringIO(text, newline="")))


def updates(items: list[Item]) -> list[dict[str, Any]]:
    assert all(isinstance(i, Row) for i in items), items
    return [i.update for i in items if isinstance(i, Row)]


def test_csv_fields_tags_and_custom_columns() -> None:
    items = csv_items(
        "id,name,email,tags,custom.plan,custom.Region Code\n"
        "cnt_1, Ada ,ada@example.com, vip ; lead;;vip ,pro,EU-1\n"
    )
    assert updates(items) == [{
        "id": "cnt_1", "name": "Ada", "email": "ada@example.com",
        "tags": ["vip", "lead", "vip"], "custom_fields": {"plan": "pro", "Region Code": "EU-1"},
    }]
    assert items[0].line == 2


def test_empty_cells_are_not_sent() -> None:
    items = csv_items("id,company,position,tags,custom.plan\ncnt_1,,  ,,\ncnt_2,Acme,,,\n")
    assert updates(items) == [{"id": "cnt_1"}, {"id": "cnt_2", "company": "Acme"}]


def test_headers_match_without_case_or_padding_and_a_bom_is_read_past(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes("\ufeff ID , Company \ncnt_1,Acme\n".encode())
    assert updates(list(read_items(path, "csv"))) == [{"id": "cnt_1", "company": "Acme"}]


def test_linkedin_export_headers_map_onto_fields_past_its_notes() -> None:
    text = (
        "Notes:\n"
        '"When exporting your connection data, you may notice that some of the email '
        'addresses are missing."\n'
        "\n"
        "id,First Name,Last Name,URL,Email Address,Company,Position,Connected On\n"
        "cnt_1,Ada,Lovelace,https://www.linkedin.com/in/ada,ada@example.com,Acme,CTO,"
        "15 Jan 2024\n"
        "cnt_2,,Hopper,,,,,\n"
    )
    items = csv_items(text)
    assert updates(items) == [
        {"id": "cnt_1", "name": "Ada Lovelace", "linkedin_url": "https://www.linkedin.com/in/ada",
         "email": "ada@example.com", "company": "Acme", "position": "CTO"},
        {"id": "cnt_2", "name": "Hopper"},
    ]
    assert [i.line for i in items] == [5, 6]


def test_a_file_without_an_id_column_is_refused_whole() -> None:
    with pytest.raises(ImportFileError, match="no 'id' column"):
        csv_items("First Name,Last Name,URL\nAda,Lovelace,https://linkedin.com/in/ada\n")


@pytest.mark.parametrize(("header", "message"), [
    ("id,emial\n", "unknown column 'emial'"),
    ("id,email,Email Address\n", "more than one column gives 'email'"),
    ("id,name,First Name\n", "more than one column gives 'name'"),
    ("id,custom.\n", "needs a key"),
    ("\n\n", "empty"),
])
def test_bad_headers_are_refused_whole(header: str, message: str) -> None:
    with pytest.raises(ImportFileError, match=message):
        csv_items(header)


def test_bad_rows_become_row_errors_with_their_lines() -> None:
    items = csv_items(
        "id,name\n"
        "cnt_1,Ada\n"
        ",Bob\n"
        "\n"
        'cnt_3,"Multi\nline"\n'
        "cnt_4\n"
        "cnt_5,Eve,extra\n"
    )
    assert items[0] == Row(2, {"id": "cnt_1", "name": "Ada"})
    assert items[1] == RowError(3, None, "the row has no id", {"id": "A contact id is required."})
    assert items[2] == Row(5, {"id": "cnt_3", "name": "Multi\nline"})
    assert isinstance(items[3], RowError) and (items[3].line, items[3].id) == (7, "cnt_4")
    assert isinstance(items[4], RowError) and items[4].line == 8
    assert items[4].error()["code"] == "INVALID_ROW"


def test_jsonl_lines_pass_as_they_are_and_bad_lines_are_row_errors() -> None:
    text = (
        '{"id": "cnt_1", "tags": [], "email": null, "custom_fields": {"plan": 3}}\n'
        "\n"
        "{not json\n"
        "[1, 2]\n"
        '{"company": "no id"}\n'
        '{"id": "cnt_6", "custom_fields": {"n": NaN}}\n'
    )
    items = list(parse_jsonl(io.StringIO(text)))
    assert items[0] == Row(1, {"id": "cnt_1", "tags": [], "email": None,
                               "custom_fields": {"plan": 3}})
    assert [(i.line, type(i).__name__) for i in items[1:]] == [
        (3, "RowError"), (4, "RowError"), (5, "RowError"), (6, "RowError"),
    ]


def test_format_comes_from_the_option_or_the_extension() -> None:
    assert detect_format(Path("a.CSV")) == "csv"
    assert detect_format(Path("a.ndjson")) == "jsonl"
    assert detect_format(Path("a.txt"), "jsonl") == "jsonl"
    with pytest.raises(ImportFileError, match="--format"):
        detect_format(Path("a.txt"))


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("id,name\ncnt_1,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(ImportFileError, match="not UTF-8"):
        list(read_items(path, "csv"))


def test_split_tags() -> None:
    assert split_tags(" a ;b;; ; c") == ["a", "b", "c"]


def test_chunks_skip_accepted_lines_and_carry_row_errors() -> None:
    items: list[Item] = [Row(n, {"id": f"cnt_{n}"}) for n in (2, 3, 5, 6, 7, 8)]
    items.insert(2, RowError(4, None, "bad"))
    got = [([r.line for r in c.rows], [e.line for e in c.errors], c.last_line)
           for c in chunks(items, after_line=2, size=2)]
    assert got == [([3, 5], [4], 5), ([6, 7], [], 7), ([8], [], 8)]
    only_errors = list(chunks([RowError(9, None, "bad")], after_line=0, size=5))
    assert [(c.rows, c.last_line) for c in only_errors] == [([], 9)]


# Sending, against a fake server: the real gateway never answers 429 or 503 on demand.


def _queued(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["updates"]
    results = [{"index": i, "id": u["id"], "update_id": f"upd_{i}", "status": "queued"}
               for i, u in enumerate(items)]
    return httpx.Response(202, json={"success": True, "data": {"results": results}})


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"success": False, "error": {"code": code, "message": "m", "details": {}}}
    return httpx.Response(status, json=body, headers=headers)


def _sender(answers: list[Any], waits: list[float]) -> tuple[Sender, list[int]]:
    sizes: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == BATCH_PATH
        sizes.append(len(json.loads(request.content)["updates"]))
        answer = answers.pop(0) if answers else _queued
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer

    client = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handle))
    return Sender(client, sleep=waits.append), sizes


ITEMS = [{"id": "cnt_1"}, {"id": "cnt_2"}, {"id": "cnt_3"}]


def test_429_and_503_are_retried_after_the_wait_they_ask_for() -> None:
    waits: list[float] = []
    sender, sizes = _sender([
        _error(429, "RATE_LIMIT_EXCEEDED", {"Retry-After": "2"}),
        _error(503, "SERVICE_UNAVAILABLE", {"Retry-After": "0.5"}),
        httpx.ConnectError("refused"),
    ], waits)
    results = sender.send(ITEMS)
    assert [r["status"] for r in results] == ["queued"] * 3
    assert waits[:2] == [2.0, 0.5] and 0 < waits[2] <= 0.5
    assert sizes == [3, 3, 3, 3]


def test_retries_are_bounded() -> None:
    waits: list[float] = []
    sender, _ = _sender([_error(503, "SERVICE_UNAVAILABLE")] * 20, waits)
    with pytest.raises(CliError, match="gave up after 12 attempts: HTTP 503 SERVICE_UNAVAILABLE"):
        sender.send(ITEMS)
    assert len(waits) == 11 and max(waits) <= 30


@pytest.mark.parametrize(("status", "code"), [(401, "INVALID_API_KEY"),
                                              (403, "INSUFFICIENT_PERMISSIONS")])
def test_a_refused_key_stops_at_once(status: int, code: str) -> None:
    waits: list[float] = []
    sender, sizes = _sender([_error(status, code)], waits)
    with pytest.raises(CliError, match=f"refused the key: HTTP {status} {code}"):
        sender.send(ITEMS)
    assert sizes == [3] and waits == []


def test_a_too_large_batch_is_split_and_a_too_large_row_rejected() -> None:
    too_large = _error(413, "PAYLOAD_TOO_LARGE")
    sender, sizes = _sender([too_large, _queued, too_large, too_large, _queued], [])
    results = sender.send(ITEMS)
    assert sizes == [3, 1, 2, 1, 1]
    assert [r.get("status") or r["error"]["code"] for r in results] == [
        "queued", "PAYLOAD_TOO_LARGE", "queued",
    ]
    assert results[1]["id"] == "cnt_2"


def test_retry_after_reads_seconds_or_a_date_and_is_capped() -> None:
    def wait(value: str) -> float | None:
        return retry_after(httpx.Response(429, headers={"Retry-After": value}))

    assert wait("3") == 3.0
    assert wait("99999") == 300.0
    assert wait("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert wait("soon") is None
