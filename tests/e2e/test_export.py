"""`contactsync export` against the real gateway and worker, and the file imported back."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cli import exporter, main
from contactsync.models import UpdateRecord
from tests.conftest import Stack, Tenant
from tests.e2e.helpers import api, contact_path, new_tenant, settled_events
from tests.e2e.test_import import cli_env, make_contacts  # noqa: F401  (a fixture)
from tests.support import wait_until

# Values a CSV cell or a `;`-joined tags cell could bend: commas, quotes, newlines, unicode,
# numbers, booleans, padded and empty strings, digits held as text, a tag holding `;`.
RICH: list[dict[str, Any]] = [
    {"name": "Zoë Ünïcode 東京", "email": "zoe@example.com", "phone": "+1 (555) 010-9999",
     "company": 'Acme, "Quoted" Inc', "position": "Line one\nLine two", "source": "linkedin",
     "linkedin_url": "https://www.linkedin.com/in/zoe", "tags": ["vip", "a,b", "ünï", "x y"],
     "custom_fields": {"plan": "pro, annual", "score": 42, "ratio": 0.5, "active": True,
                       "inactive": False, "note": 'say "hi"\nthen leave', "padded": "  x  ",
                       "empty": "", "zero": 0, "digits": "42", "word": "true"}},
    {"name": "Semi Colon", "tags": ["semi;colon", "plain"], "source": "crm",
     "custom_fields": {"plan": 7, "digits": "007", " spaced key ": "k"}},
    {"name": "Only A Name"},
]


def create(stack: Stack, key: str, fields: dict[str, Any]) -> dict[str, Any]:
    response = api(stack, key).post("/external/v1/contacts", json=fields)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def listed(stack: Stack, key: str) -> dict[str, dict[str, Any]]:
    """Return every contact of the key's account, read through the API."""
    found: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": 100, "sort_order": "asc"}
    while True:
        data = api(stack, key).get("/external/v1/contacts", params=params).json()["data"]
        found.update({c["id"]: c for c in data["contacts"]})
        if not data["pagination"]["next_cursor"]:
            return found
        params["cursor"] = data["pagination"]["next_cursor"]


def statuses(stack: Stack, account_id: str) -> list[str]:
    with stack.db.reading() as session:
        query = select(UpdateRecord.status).where(UpdateRecord.account_id == account_id)
        return list(session.scalars(query))


def without_updated_at(contacts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i: {k: v for k, v in c.items() if k != "updated_at"} for i, c in contacts.items()}


def export_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def seeded(stack: Stack) -> tuple[Tenant, dict[str, dict[str, Any]]]:
    tenant = new_tenant(stack, "acme")
    for fields in RICH:
        create(stack, tenant.key, fields)
    make_contacts(stack, tenant.account_id, 130)  # more than one page
    return tenant, listed(stack, tenant.key)


@pytest.mark.parametrize("name", ["people.csv", "people.jsonl"])
def test_an_export_imports_back_and_changes_nothing(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
    name: str,
) -> None:
    tenant, before = seeded(stack)
    other = new_tenant(stack, "other")
    create(stack, other.key, {"name": "Not Yours", "tags": ["vip"]})
    events_before = settled_events(stack)
    path = tmp_path / name

    assert main(["export", str(path), "--api-key", tenant.key]) == 0

    out = capsys.readouterr().out
    assert f"exported {len(before)} contacts to {path}" in out
    rows = export_rows(path)
    assert sorted(r["id"] for r in rows) == sorted(before)  # every one, and no one else's
    if path.suffix == ".jsonl":
        assert {r["id"]: r for r in rows} == before  # exactly the API's shape
    else:
        assert "json:custom.plan" in rows[0] and "json:tags" in rows[0]
        assert "custom.word" in rows[0] and "source" in rows[0]
    assert [p.name for p in tmp_path.iterdir()] == [name]

    assert main(["import", str(path), "--api-key", tenant.key]) == 0

    assert f"{len(before)} rows read, {len(before)} queued, 0 rejected" in capsys.readouterr().out
    wait_until(lambda: len(statuses(stack, tenant.account_id)) >= len(before), timeout=60)
    assert set(statuses(stack, tenant.account_id)) == {"noop"}
    after = listed(stack, tenant.key)
    assert without_updated_at(after) == without_updated_at(before)
    assert settled_events(stack) == events_before


def test_updated_since_exports_only_what_changed_at_or_after_it(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
) -> None:
    tenant = new_tenant(stack, "acme")
    ids = make_contacts(stack, tenant.account_id, 5)
    client = api(stack, tenant.key)
    changed = []
    for contact_id in ids[1:3]:
        response = client.put(contact_path(contact_id), json={"position": "CTO"})
        assert response.status_code == 200, response.text
        changed.append(response.json()["data"])
    since = changed[0]["updated_at"]
    path = tmp_path / "changed.out"

    argv = ["export", str(path), "--format", "jsonl", "--updated-since", since,
            "--api-key", tenant.key]
    assert main(argv) == 0

    assert "exported 2 contacts updated since" in capsys.readouterr().out
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ids[1:3]


def test_failures_are_one_line_and_leave_no_file(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = new_tenant(stack, "acme")
    make_contacts(stack, tenant.account_id, 3)
    path = tmp_path / "people.csv"
    path.write_text("the previous export\n")
    monkeypatch.setattr(exporter, "backoff", lambda attempt: 0.01)
    cases = {
        "the API refused the key: HTTP 401 INVALID_API_KEY":
            ["--api-key", "csk_live_" + "x" * 40],
        "cannot reach http://127.0.0.1:9": ["--api-key", tenant.key,
                                            "--api-url", "http://127.0.0.1:9"],
        "no API key": [],
    }
    for expected, options in cases.items():
        assert main(["export", str(path), *options]) == 1, expected
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and expected in captured.err, (expected, captured)
        assert "Traceback" not in captured.err and "x" * 40 not in captured.err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(path), "--updated-since", "2024-01-15", "--api-key", tenant.key])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid date-time '2024-01-15'" in err

    def interrupted(self: exporter.Pager) -> Any:
        yield [{"id": "cnt_1", "name": "Half"}]
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter.Pager, "pages", interrupted)
    assert main(["export", str(path), "--api-key", tenant.key]) == 130
    assert "people.csv was not written" in capsys.readouterr().err
    assert path.read_text() == "the previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["people.csv"]
