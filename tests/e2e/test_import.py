"""`contactsync import` against the real gateway and worker: rows in, contacts changed."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cli import importer, main
from contactsync.contacts import create_contact
from contactsync.models import Contact
from contactsync.settings import get_settings
from tests.conftest import Stack
from tests.e2e.helpers import ASYNC, api, contact_path, new_tenant, update_records
from tests.support import wait_until

HEADER = ["id", "name", "company", "email", "tags", "custom.plan"]


@pytest.fixture
def cli_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the command at the test gateway through its setting, as a user would."""
    monkeypatch.setenv("CONTACTSYNC_API_URL", stack.base_url)
    monkeypatch.delenv("CONTACTSYNC_API_KEY", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def make_contacts(stack: Stack, account_id: str, count: int) -> list[str]:
    """Create `count` contacts in one transaction (one at a time takes seconds)."""
    with stack.db.unit_of_work() as session:
        return [create_contact(session, account_id, {"name": f"Old {n}", "company": "Old Co",
                                                     "tags": ["old"]}).id
                for n in range(count)]


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([HEADER, *rows])
    return path


def good_row(contact_id: str, n: int) -> list[str]:
    return [contact_id, f"New {n}", f"Co {n}", f"p{n}@example.com", "a; b", f"plan{n}"]


def contacts_of(stack: Stack, account_id: str) -> dict[str, Contact]:
    with stack.db.reading() as session:
        found = session.scalars(select(Contact).where(Contact.account_id == account_id))
        return {c.id: c for c in found}


def wait_applied(stack: Stack, count: int) -> None:
    wait_until(lambda: update_records(stack) >= count, timeout=30)
    assert update_records(stack) == count


def rejects_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary_counts(out: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+) rows read, (\d+) queued, (\d+) rejected", out)
    assert match, out
    read, queued, rejected = (int(g) for g in match.groups())
    return read, queued, rejected


def test_a_csv_updates_contacts_and_writes_its_rejected_rows(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = new_tenant(stack, "acme")
    ids = make_contacts(stack, tenant.account_id, 300)
    rows = [good_row(contact_id, n) for n, contact_id in enumerate(ids)]
    rows[10][3] = "not-an-email"  # line 12: rejected by the endpoint
    rows[20][0] = ""  # line 22: no id, rejected before sending
    rows[30] = rows[30][:2]  # line 32: too few cells
    rows[40][0] = "has spaces"  # line 42: no contact can have this id
    path = write_csv(tmp_path / "people.csv", rows)

    status = main(["import", str(path), "--api-key", tenant.key, "--batch-size", "100"])

    out = capsys.readouterr().out
    assert status == 1
    assert summary_counts(out) == (300, 296, 4)
    assert f"4 rows were rejected: see {path}.rejected.jsonl" in out
    assert re.search(r"this run: 300 rows in [\d.]+ s \(\d+ rows/s\)", out), out
    rejects = rejects_of(tmp_path / "people.csv.rejected.jsonl")
    assert [(r["line"], r["id"], r["error"]["code"]) for r in rejects] == [
        (12, ids[10], "VALIDATION_ERROR"), (22, None, "INVALID_ROW"),
        (32, ids[30], "INVALID_ROW"), (42, "has spaces", "NOT_FOUND"),
    ]
    assert set(rejects[0]["error"]["details"]["fields"]) == {"email"}
    assert not (tmp_path / "people.csv.import-state.json").exists()

    wait_applied(stack, 296)
    contacts = contacts_of(stack, tenant.account_id)
    changed = [n for n, contact_id in enumerate(ids) if contacts[contact_id].name == f"New {n}"]
    assert changed == [n for n in range(300) if n not in (10, 20, 30, 40)]
    sample = contacts[ids[7]]
    assert (sample.company, sample.email, sample.tags, sample.custom_fields) == (
        "Co 7", "p7@example.com", ["a", "b"], {"plan": "plan7"},
    )
    assert contacts[ids[10]].name == "Old 10"


def test_an_interrupted_import_resumes_after_the_last_accepted_batch(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = new_tenant(stack, "acme")
    ids = make_contacts(stack, tenant.account_id, 50)
    rows = [good_row(contact_id, n) for n, contact_id in enumerate(ids)]
    rows[5][3] = "bad"  # line 7, in the first run
    rows[45][3] = "bad"  # line 47, in the second
    path = write_csv(tmp_path / "people.csv", rows)
    command = ["import", str(path), "--api-key", tenant.key, "--batch-size", "10"]
    sent: list[int] = []
    real_send = importer.Sender.send

    def send(self: importer.Sender, items: list[dict[str, Any]],
             key: str | None = None) -> list[dict[str, Any]]:
        if interrupt and len(sent) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third batch is being sent
        sent.append(len(items))
        return real_send(self, items, key)

    monkeypatch.setattr(importer.Sender, "send", send)
    interrupt = True
    assert main(command) == 130
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "contactsync: interrupted; rows through line 21 went through; "
        "run the same command to resume"
    ]
    assert sent == [10, 10]
    # Changed by someone else meanwhile: a resumed run must not send row 1 again.
    response = api(stack, tenant.key).put(contact_path(ids[0]), json={"name": "Renamed"},
                                          headers=ASYNC)
    assert response.status_code == 202, response.text

    interrupt = False
    assert main(command) == 1
    out = capsys.readouterr().out
    assert sent == [10, 10, 10, 10, 10]
    assert summary_counts(out) == (50, 48, 2)
    assert "this run: 30 rows" in out and "resumed after line 21" in out
    assert [r["line"] for r in rejects_of(tmp_path / "people.csv.rejected.jsonl")] == [7, 47]
    assert not (tmp_path / "people.csv.import-state.json").exists()
    wait_applied(stack, 48 + 1)
    contacts = contacts_of(stack, tenant.account_id)
    assert contacts[ids[0]].name == "Renamed"
    assert [contacts[i].name for i in ids[1:5]] == ["New 1", "New 2", "New 3", "New 4"]
    assert contacts[ids[49]].name == "New 49"


def test_a_batch_sent_again_on_resume_is_applied_once(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = new_tenant(stack, "acme")
    ids = make_contacts(stack, tenant.account_id, 30)
    path = write_csv(tmp_path / "people.csv", [good_row(i, n) for n, i in enumerate(ids)])
    command = ["import", str(path), "--api-key", tenant.key, "--batch-size", "10"]
    real_send = importer.Sender.send
    answers: list[list[str]] = []

    def send(self: importer.Sender, items: list[dict[str, Any]],
             key: str | None = None) -> list[dict[str, Any]]:
        results = real_send(self, items, key)
        answers.append([r["update_id"] for r in results])
        if len(answers) == 2:
            raise KeyboardInterrupt  # the second batch was queued; its answer never arrived
        return results

    monkeypatch.setattr(importer.Sender, "send", send)
    assert main(command) == 130
    assert main(command) == 0
    assert "resumed after line 11" in capsys.readouterr().out

    assert answers[2] == answers[1]  # the same batch under the same key: the first answer
    queued = {update_id for batch in answers for update_id in batch}
    assert len(queued) == 30
    wait_applied(stack, len(queued))
    assert [update_records(stack, i) for i in ids] == [1] * 30
    contacts = contacts_of(stack, tenant.account_id)
    assert [contacts[i].name for i in ids] == [f"New {n}" for n in range(30)]


def test_a_changed_file_is_not_resumed_without_restart(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = new_tenant(stack, "acme")
    ids = make_contacts(stack, tenant.account_id, 4)
    path = write_csv(tmp_path / "people.csv", [good_row(i, n) for n, i in enumerate(ids)])
    command = ["import", str(path), "--api-key", tenant.key, "--batch-size", "2"]
    real_send = importer.Sender.send
    calls: list[int] = []

    def send_once(self: importer.Sender, items: list[dict[str, Any]],
                  key: str | None = None) -> list[dict[str, Any]]:
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_send(self, items, key)

    monkeypatch.setattr(importer.Sender, "send", send_once)
    assert main(command) == 130
    monkeypatch.undo()
    with path.open("a") as handle:
        handle.write(f"{ids[0]},Appended,,,,\n")
    capsys.readouterr()

    assert main(command) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "the file changed since an interrupted import" in err[0], err
    assert "--restart" in err[0]

    assert main([*command, "--restart"]) == 0
    out = capsys.readouterr().out
    assert summary_counts(out) == (5, 5, 0) and "every row was queued" in out
    assert not (tmp_path / "people.csv.rejected.jsonl").exists()
    wait_applied(stack, 2 + 5)  # the interrupted run's first batch, then every row
    assert contacts_of(stack, tenant.account_id)[ids[0]].name == "Appended"


@pytest.mark.parametrize(("permissions", "code"), [
    (None, "INVALID_API_KEY"), (["contacts:read"], "INSUFFICIENT_PERMISSIONS"),
])
def test_a_refused_key_is_one_line_on_stderr_and_exit_1(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    permissions: list[str] | None, code: str,
) -> None:
    tenant = new_tenant(stack, "acme", permissions)
    ids = make_contacts(stack, tenant.account_id, 3)
    path = write_csv(tmp_path / "people.csv", [good_row(i, n) for n, i in enumerate(ids)])
    key = "csk_live_" + "x" * 40 if permissions is None else tenant.key

    assert main(["import", str(path), "--api-key", key]) == 1

    captured = capsys.readouterr()
    status = 401 if permissions is None else 403
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"contactsync: error: the API refused the key: HTTP {status} {code}")
    assert key not in captured.err + captured.out
    assert "Traceback" not in captured.err
    # The run's id is kept for its keys, but no row went through.
    state = json.loads((tmp_path / "people.csv.import-state.json").read_text())
    assert (state["last_line"], state["read"], state["queued"]) == (0, 0, 0)
    assert {c.name for c in contacts_of(stack, tenant.account_id).values()} == {
        "Old 0", "Old 1", "Old 2",
    }


def test_jsonl_with_the_key_from_the_environment_can_clear_fields(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = new_tenant(stack, "acme")
    first, second = make_contacts(stack, tenant.account_id, 2)
    path = tmp_path / "changes.jsonl"
    path.write_text(
        json.dumps({"id": first, "tags": [], "company": None, "custom_fields": {"n": 1}}) + "\n"
        + json.dumps({"id": second, "position": "CTO"}) + "\n"
    )
    monkeypatch.setenv("CONTACTSYNC_API_KEY", tenant.key)
    get_settings.cache_clear()

    assert main(["import", str(path)]) == 0

    out = capsys.readouterr().out
    assert summary_counts(out) == (2, 2, 0) and "every row was queued" in out
    wait_applied(stack, 2)
    contacts = contacts_of(stack, tenant.account_id)
    assert (contacts[first].tags, contacts[first].company, contacts[first].custom_fields) == (
        [], None, {"n": 1},
    )
    assert contacts[second].position == "CTO" and contacts[second].company == "Old Co"


def test_bad_invocations_are_one_line_on_stderr(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("id\n")
    linkedin = tmp_path / "Connections.csv"
    linkedin.write_text("First Name,Last Name,URL\nAda,Lovelace,https://linkedin.com/in/ada\n")
    cases = {
        "no such file": ["import", str(tmp_path / "missing.csv"), "--api-key", "k"],
        "--format csv|jsonl": ["import", str(notes), "--api-key", "k"],
        "no API key": ["import", str(linkedin)],
        "no 'id' column": ["import", str(linkedin), "--api-key", "k"],
    }
    for expected, argv in cases.items():
        assert main(argv) == 1, expected
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and expected in err[0], (expected, err)
