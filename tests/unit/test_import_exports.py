"""Recognised exports, `--match` and the batches' `Idempotency-Key`, without the real gateway.

The batch upsert endpoint is built elsewhere at the same time: the sending side is checked here
against its contract, through a small real HTTP server that records what it is sent.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cli import importer, main
from cli.import_exports import HUBSPOT, LINKEDIN, SALESFORCE, MatchError, parse_match
from cli.import_rows import (
    ImportFileError,
    Row,
    RowError,
    layout_of,
    parse_csv,
    parse_jsonl,
    read_items,
    upsert_item,
)
from cli.importer import UPSERT_PATH, batch_key
from tests.support import free_port, wait_until

EXPORTS = Path(__file__).parent.parent / "fixtures" / "exports"


def rows_of(path: Path) -> list[Row]:
    items = list(read_items(path, "csv"))
    assert all(isinstance(i, Row) for i in items), items
    return [i for i in items if isinstance(i, Row)]


def test_linkedin_connections_are_recognised_past_their_notes_and_mapped() -> None:
    path = EXPORTS / "Connections.csv"
    layout = layout_of(path, "csv")
    assert (layout.export, layout.dropped) == (LINKEDIN, ())
    rows = rows_of(path)
    assert [r.line for r in rows] == [5, 6, 7, 8, 9]
    assert rows[0].update == {
        "name": "Ada Lovelace", "linkedin_url": "https://www.linkedin.com/in/ada-lovelace-1815",
        "email": "ada@example.com", "company": "Analytical Engines Ltd",
        "position": "Chief Programmer",
    }
    assert "email" not in rows[1].update  # no email: not sent, never cleared
    assert rows[1].update["position"] == "Rear Admiral, Computing"
    assert rows[2].update["name"] == "José Ñúñez Müller"
    assert rows[2].update["company"] == "Café Ørsted"
    assert rows[3].update == {"name": "李 小龙",
                              "linkedin_url": "https://www.linkedin.com/in/li-xiaolong"}


def test_a_hubspot_export_keeps_its_record_id_and_leaves_out_columns_without_a_field() -> None:
    path = EXPORTS / "hubspot-contacts.csv"
    layout = layout_of(path, "csv")
    assert layout.export == HUBSPOT
    assert layout.dropped == ("Contact owner", "Lifecycle Stage", "Create Date",
                              "Last Activity Date", "Marketing contact status")
    rows = rows_of(path)
    assert rows[0].update == {
        "external_ids": {"hubspot": "51"}, "name": "Ada Lovelace", "email": "ada@example.com",
        "phone": "+44 20 7946 0018", "company": "Analytical Engines Ltd",
        "position": "Chief Programmer",
    }
    # A phone the API refuses is sent as it is: the endpoint rejects that row alone.
    assert rows[2].update["phone"] == "call me maybe"
    assert rows[3].update == {"external_ids": {"hubspot": "54"}, "name": "Nakamura"}


@pytest.mark.parametrize(("name", "first"), [
    ("salesforce-report.csv", {
        "external_ids": {"salesforce": "0035e00000AbCdEAA1"}, "name": "Ada Lovelace",
        "position": "Chief Programmer", "company": "Analytical Engines Ltd",
        "phone": "+44 20 7946 0018", "email": "ada@example.com"}),
    ("salesforce-contacts.csv", {
        "external_ids": {"salesforce": "0035e00000XyZaBAA1"}, "name": "Alan Turing",
        "email": "alan@example.org", "phone": "+44 1908 640404", "company": "Bletchley Park",
        "position": "Cryptanalyst"}),
])
def test_salesforce_exports_with_id_or_contact_id_are_recognised(
    name: str, first: dict[str, Any]
) -> None:
    layout = layout_of(EXPORTS / name, "csv")
    assert layout.export == SALESFORCE
    assert rows_of(EXPORTS / name)[0].update == first


def test_an_older_linkedin_export_without_urls_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "Connections.csv"
    path.write_text("First Name,Last Name,Email Address,Company,Position,Connected On\n"
                    "Ada,Lovelace,ada@example.com,Acme,CTO,15 Jan 2019\n")
    assert layout_of(path, "csv").export == LINKEDIN
    assert rows_of(path)[0].update == {"name": "Ada Lovelace", "email": "ada@example.com",
                                       "company": "Acme", "position": "CTO"}


def test_the_salesforce_data_export_names_are_read_too(tmp_path: Path) -> None:
    # A data export (Data Loader) names columns as the API does, upper-cased, `Name` included.
    path = tmp_path / "Contact.csv"
    path.write_text('"ID","ACCOUNTID","FIRSTNAME","LASTNAME","NAME","EMAIL","TITLE"\n'
                    '"003A","001B","Zoë","Ångström","Zoë Ångström","zoe@example.se","Prof"\n')
    layout = layout_of(path, "csv")
    assert (layout.export, layout.dropped) == (SALESFORCE, ("ACCOUNTID", "NAME"))
    assert rows_of(path)[0].update == {
        "external_ids": {"salesforce": "003A"}, "name": "Zoë Ångström",
        "email": "zoe@example.se", "position": "Prof"}


def test_our_own_format_with_an_id_is_no_export_and_still_needs_its_id(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    for header in ("id,First Name,Last Name,URL,Connected On", "id,name,email,external_ids.hubspot",
                   "id,First Name,Last Name,email"):
        path.write_text(header + "\n")
        assert layout_of(path, "csv").export is None, header
    with pytest.raises(ImportFileError, match="or pass --match"):
        list(parse_csv(io.StringIO("name,email\nAda,a@example.com\n", newline="")))


def test_our_columns_in_a_recognised_export_are_kept() -> None:
    text = ("First Name,Last Name,URL,Connected On,custom.team,tags,Notes\n"
            "Ada,Lovelace,https://linkedin.com/in/ada,1 Jan 2024,R&D,a; b,hello\n")
    [row] = list(parse_csv(io.StringIO(text, newline="")))
    assert isinstance(row, Row)
    assert row.update == {"name": "Ada Lovelace", "linkedin_url": "https://linkedin.com/in/ada",
                          "custom_fields": {"team": "R&D"}, "tags": ["a", "b"]}


def test_upserting_our_format_leaves_the_id_out_and_reads_external_id_columns() -> None:
    text = "id,name,email,source,external_ids.hubspot\ncnt_1,Ada,a@example.com,api,51\n"
    [row] = list(parse_csv(io.StringIO(text, newline=""), upsert=True))
    assert isinstance(row, Row)
    assert row.update == {"name": "Ada", "email": "a@example.com", "source": "api",
                          "external_ids": {"hubspot": "51"}}
    [line] = list(parse_jsonl(io.StringIO('{"email": "a@example.com", "id": "cnt_1"}\n'), True))
    assert isinstance(line, Row) and line.update == {"email": "a@example.com"}


def test_an_upsert_item_names_its_identities_and_a_row_without_any_is_an_error() -> None:
    item = upsert_item(Row(3, {"name": "Ada", "email": "a@example.com"}),
                       ("linkedin_url", "email"), "linkedin")
    assert isinstance(item, Row)
    assert item.update == {"name": "Ada", "email": "a@example.com",
                           "match_on": ["linkedin_url", "email"], "source": "linkedin"}
    by_id = upsert_item(Row(4, {"external_ids": {"hubspot": "51"}}), ("external_ids.hubspot",),
                        None)
    assert isinstance(by_id, Row) and "source" not in by_id.update
    none = upsert_item(Row(5, {"name": "Grace"}), ("linkedin_url", "email"), "linkedin")
    assert isinstance(none, RowError) and none.line == 5
    assert none.error()["code"] == "INVALID_ROW"
    own = upsert_item(Row(6, {"email": "a@example.com", "match_on": "email"}),
                      ("linkedin_url",), None)
    assert isinstance(own, Row) and own.update["match_on"] == "email"


def test_match_is_parsed_in_order_and_a_bad_identity_is_refused() -> None:
    assert parse_match("external_ids.hubspot, email") == ("external_ids.hubspot", "email")
    for bad in ("phone", "external_ids.", "external_ids.Hub-Spot", "email,email", ""):
        with pytest.raises(MatchError):
            parse_match(bad)


def test_an_unknown_identity_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "people.csv"
    path.write_text("name,email\nAda,a@example.com\n")
    with pytest.raises(SystemExit) as exit_:
        main(["import", str(path), "--api-key", "k", "--match", "email,phone"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "contactsync import: error: argument --match: 'phone' is not an identity: "
        "use email, linkedin_url or external_ids.<system>"
    ]


def test_a_batch_key_is_its_runs_files_and_places() -> None:
    file = {"size": 10, "mtime_ns": 1, "format": "csv"}
    key = batch_key("run1", file, 2, 500)
    assert key == batch_key("run1", dict(file), 2, 500)
    assert key.startswith("import-") and len(key) <= 255
    others = {batch_key("run1", file, 502, 500), batch_key("run1", file, 2, 499),
              batch_key("run2", file, 2, 500), batch_key("run1", {**file, "size": 11}, 2, 500)}
    assert key not in others and len(others) == 4


# Sending, against the batch upsert endpoint's contract, on a real HTTP server.


@dataclass
class Recorder:
    """What the contract server was sent, and a switch to refuse the next batch with 413."""

    requests: list[tuple[str, str | None, list[dict[str, Any]]]] = field(default_factory=list)
    too_large_once: bool = False


@pytest.fixture
def upsert_server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    async def upsert(request: Request) -> JSONResponse:
        items = (await request.json())["upserts"]
        if recorder.too_large_once and len(items) > 1:
            recorder.too_large_once = False
            error = {"code": "PAYLOAD_TOO_LARGE", "message": "m", "details": {}}
            return JSONResponse({"success": False, "error": error}, status_code=413)
        recorder.requests.append(
            (request.url.path, request.headers.get("idempotency-key"), items))
        results: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if item.get("phone", "").startswith("call"):
                error = {"code": "VALIDATION_ERROR", "message": "Invalid input.",
                         "details": {"fields": {"phone": "Not a phone number."}}}
                results.append({"index": index, "error": error})
            else:
                results.append({"index": index, "update_id": f"upd_{index}", "status": "queued"})
        return JSONResponse({"success": True, "data": {"results": results}}, status_code=202)

    app = Starlette(routes=[Route(UPSERT_PATH, upsert, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    yield f"http://127.0.0.1:{port}", recorder
    server.should_exit = True
    thread.join(timeout=10)


def test_a_hubspot_export_is_upserted_by_its_record_id_then_email(
    upsert_server: tuple[str, Recorder], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, recorder = upsert_server
    path = tmp_path / "hubspot.csv"
    path.write_bytes((EXPORTS / "hubspot-contacts.csv").read_bytes())

    status = main(["import", str(path), "--api-url", url, "--api-key", "k", "--batch-size", "2"])

    captured = capsys.readouterr()
    assert status == 1  # one phone refused
    assert "4 rows read, 3 queued, 1 rejected" in captured.out
    assert captured.err.splitlines() == [
        "contactsync: hubspot.csv is a HubSpot contacts export: upserting by "
        "external_ids.hubspot,email",
        "contactsync: columns left out (no field for them): Contact owner, Lifecycle Stage, "
        "Create Date, Last Activity Date, Marketing contact status",
    ]
    assert [(p, len(items)) for p, _, items in recorder.requests] == [(UPSERT_PATH, 2)] * 2
    first = recorder.requests[0][2][0]
    assert first["match_on"] == ["external_ids.hubspot", "email"]
    assert first["source"] == "crm"
    assert first["external_ids"] == {"hubspot": "51"}
    keys = [key for _, key, _ in recorder.requests]
    assert all(k and k.startswith("import-") for k in keys) and len(set(keys)) == 2
    [reject] = [json.loads(line) for line in (tmp_path / "hubspot.csv.rejected.jsonl")
                .read_text().splitlines()]
    assert (reject["line"], reject["error"]["code"]) == (4, "VALIDATION_ERROR")


def test_match_sends_any_jsonl_to_the_upsert_endpoint_and_rows_without_identity_are_rejected(
    upsert_server: tuple[str, Recorder], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, recorder = upsert_server
    path = tmp_path / "people.jsonl"
    path.write_text('{"name": "Ada", "email": "a@example.com"}\n{"name": "No identity"}\n')

    status = main(["import", str(path), "--api-url", url, "--api-key", "k", "--match", "email"])

    assert status == 1
    [(_, _, items)] = recorder.requests
    assert items == [{"name": "Ada", "email": "a@example.com", "match_on": ["email"]}]
    [reject] = [json.loads(line) for line in (tmp_path / "people.jsonl.rejected.jsonl")
                .read_text().splitlines()]
    assert (reject["line"], reject["error"]["code"]) == (2, "INVALID_ROW")
    capsys.readouterr()


def test_a_resumed_import_sends_a_batch_again_under_its_key_and_restart_makes_new_keys(
    upsert_server: tuple[str, Recorder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, recorder = upsert_server
    path = tmp_path / "Connections.csv"
    path.write_bytes((EXPORTS / "Connections.csv").read_bytes())
    command = ["import", str(path), "--api-url", url, "--api-key", "k", "--batch-size", "2"]
    real_send = importer.Sender.send
    calls: list[int] = []

    def send(self: importer.Sender, items: list[dict[str, Any]],
             key: str | None = None) -> list[dict[str, Any]]:
        calls.append(len(items))
        results = real_send(self, items, key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second batch went, its answer never arrived
        return results

    monkeypatch.setattr(importer.Sender, "send", send)
    assert main(command) == 130
    first_run = [key for _, key, _ in recorder.requests]
    recorder.requests.clear()

    assert main(command) == 0
    resumed = [key for _, key, _ in recorder.requests]
    assert resumed[0] == first_run[1]  # the same batch, the same key: applied once
    assert len(set(first_run + resumed)) == 3

    calls.clear()
    recorder.requests.clear()
    assert main(command) == 130  # a fresh import: state cleared, a new run
    fresh = [key for _, key, _ in recorder.requests]
    recorder.requests.clear()
    assert main([*command, "--restart"]) == 0
    restarted = [key for _, key, _ in recorder.requests]
    assert not set(restarted) & set(fresh + first_run + resumed)
    capsys.readouterr()


def test_a_split_batch_sends_each_half_under_its_own_key(
    upsert_server: tuple[str, Recorder], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, recorder = upsert_server
    recorder.too_large_once = True
    path = tmp_path / "Connections.csv"
    path.write_bytes((EXPORTS / "Connections.csv").read_bytes())
    assert main(["import", str(path), "--api-url", url, "--api-key", "k"]) == 0
    keys = [key for _, key, _ in recorder.requests]
    assert [len(items) for _, _, items in recorder.requests] == [2, 3]
    assert keys[0] and keys[0].endswith(".1") and keys[1] == keys[0][:-2] + ".2"
    capsys.readouterr()

