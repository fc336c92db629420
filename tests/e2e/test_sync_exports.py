"""Real exports of LinkedIn, HubSpot and Salesforce, imported as they are: one contact a person.

Each file is imported with one command and no flags, twice, then again with a changed value,
through the real gateway and worker: the first run creates, the second changes nothing, the
third updates, and no run makes a second contact of anyone.
"""

from __future__ import annotations

import csv
import re
import shutil
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cli import main
from contactsync.models import Contact, UpdateRecord
from contactsync.settings import get_settings
from tests.conftest import Stack
from tests.e2e.helpers import new_tenant
from tests.support import wait_until

EXPORTS = Path(__file__).parent.parent / "fixtures" / "exports"


@pytest.fixture
def cli_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the command at the test gateway through its setting, as a user would."""
    monkeypatch.setenv("CONTACTSYNC_API_URL", stack.base_url)
    monkeypatch.delenv("CONTACTSYNC_API_KEY", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def statuses(stack: Stack, account_id: str) -> Counter[str]:
    with stack.db.reading() as session:
        rows = session.execute(
            select(UpdateRecord.status, func.count())
            .where(UpdateRecord.account_id == account_id).group_by(UpdateRecord.status)
        )
        return Counter({status: count for status, count in rows})


def people(stack: Stack, account_id: str) -> dict[str, Contact]:
    with stack.db.reading() as session:
        found = session.scalars(select(Contact).where(Contact.account_id == account_id))
        return {c.name: c for c in found}


def import_file(
    stack: Stack, path: Path, key: str, account_id: str, capsys: pytest.CaptureFixture[str],
) -> Counter[str]:
    """Run `contactsync import FILE`; wait until every queued row is finished; return the
    statuses this run added."""
    before = statuses(stack, account_id)
    main(["import", str(path), "--api-key", key])
    out = capsys.readouterr().out
    match = re.search(r"(\d+) rows read, (\d+) queued, (\d+) rejected", out)
    assert match, out
    queued = int(match.group(2))
    wait_until(lambda: statuses(stack, account_id).total() >= before.total() + queued,
               timeout=60)
    added = statuses(stack, account_id)
    added.subtract(before)
    return +added


@pytest.mark.parametrize(("export", "names"), [
    ("Connections.csv", {"Ada Lovelace", "Grace Hopper", "José Ñúñez Müller", "李 小龙",
                         "Alan Turing"}),
    ("hubspot-contacts.csv", {"Ada Lovelace", "Grace Hopper", "Nakamura"}),
    ("salesforce-contacts.csv", {"Alan Turing", "Katherine Johnson"}),
    ("salesforce-report.csv", {"Ada Lovelace", "Grace Hopper", "Zoë Ångström"}),
])
def test_an_export_imports_twice_as_one_contact_a_person_and_then_updates(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    export: str, names: set[str],
) -> None:
    tenant = new_tenant(stack, "sync")
    path = tmp_path / export
    shutil.copy(EXPORTS / export, path)

    first = import_file(stack, path, tenant.key, tenant.account_id, capsys)
    assert first == Counter({"created": len(names)})
    contacts = people(stack, tenant.account_id)
    assert set(contacts) == {nfc(n) for n in names}

    again = import_file(stack, path, tenant.key, tenant.account_id, capsys)
    assert again == Counter({"noop": len(names)})
    assert {c.id for c in people(stack, tenant.account_id).values()} == {
        c.id for c in contacts.values()
    }

    changed = tmp_path / f"changed-{export}"
    text = path.read_text(encoding="utf-8")
    person = next(iter(sorted(names)))
    changed.write_text(_renamed_company(text, person), encoding="utf-8")
    third = import_file(stack, changed, tenant.key, tenant.account_id, capsys)
    assert third == Counter({"applied": 1, "noop": len(names) - 1})
    after = people(stack, tenant.account_id)
    assert {c.id for c in after.values()} == {c.id for c in contacts.values()}
    assert after[nfc(person)].company == "Renamed Inc"


def test_one_person_in_two_exports_is_one_contact_that_gains_both_ids(
    stack: Stack, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = new_tenant(stack, "sync")
    for export in ("Connections.csv", "hubspot-contacts.csv", "salesforce-report.csv"):
        shutil.copy(EXPORTS / export, tmp_path / export)
        import_file(stack, tmp_path / export, tenant.key, tenant.account_id, capsys)
    with stack.db.reading() as session:
        adas = list(session.scalars(select(Contact).where(
            Contact.account_id == tenant.account_id, Contact.name == "Ada Lovelace")))
    # Ada carries the same email in all three, so each export found the one contact.
    assert len(adas) == 1
    assert adas[0].external_ids == {"hubspot": "51", "salesforce": "0035e00000AbCdEAA1"}
    assert adas[0].linkedin_url == "https://www.linkedin.com/in/ada-lovelace-1815"


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _renamed_company(text: str, person: str) -> str:
    """Give one person's row a new company, whatever the export's column order."""
    first, _, last = person.partition(" ")
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if first in line and (not last or last in line):
            header = next(h for h in lines if "First Name" in h or "FIRSTNAME" in h.upper())
            columns = [c.strip().strip('"') for c in header.rstrip("\r\n").split(",")]
            company = next(i for i, c in enumerate(columns)
                           if c in ("Company", "Company Name", "Account Name"))
            cells = next(csv.reader([line]))
            cells[company] = "Renamed Inc"
            lines[index] = ",".join(f'"{c}"' for c in cells) + "\n"
            return "".join(lines)
    raise AssertionError(f"no row for {person}")
