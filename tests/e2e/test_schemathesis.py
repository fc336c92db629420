"""Schemathesis against the gateway's own /openapi.json: a real server, Redis and worker.

Every built-in check is on (`--checks all`): no server errors; status codes, content types,
headers and bodies as documented; schema-invalid requests refused and valid ones accepted;
auth not ignored; `Allow` on 405; resources gone after DELETE. Its examples, coverage,
fuzzing and stateful (OpenAPI links) phases all run.

Schemathesis's pytest plugin does not run under pytest 9 (it sets `Function._nodeid`), so the
test drives its command line, as a user would. CI runs a bounded, seeded form. The long form
(recorded in docs/security.md):

    CONTACTSYNC_SCHEMATHESIS_EXAMPLES=100 .venv/bin/pytest tests/e2e/test_schemathesis.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from contactsync.keys import create_key
from tests.conftest import ALL_PERMISSIONS, Stack, make_contact
from tests.e2e.helpers import ASYNC, api
from tests.support import ROOT

pytestmark = pytest.mark.slow  # schemathesis: hundreds of generated requests

# Cases per operation and phase that Schemathesis generates (its --max-examples).
EXAMPLES = int(os.environ.get("CONTACTSYNC_SCHEMATHESIS_EXAMPLES", "5"))
# CI is reproducible; a long run explores, unless a seed is given.
SEED = os.environ.get("CONTACTSYNC_SCHEMATHESIS_SEED", "" if "CONTACTSYNC_SCHEMATHESIS_EXAMPLES"
                      in os.environ else "20261126")
ST = Path(sys.executable).with_name("st")


def fuzz_account(stack: Stack) -> tuple[str, list[str], list[str], str]:
    """Return a key (with a rate high enough to reach every route), contacts, updates, a cursor."""
    with stack.db.unit_of_work() as session:
        row, key = create_key(session, "fuzz", [*ALL_PERMISSIONS, "webhooks:manage"],
                              rate_limit_per_second=100_000)
        account_id = row.account_id
    contacts = [
        make_contact(stack.db, account_id, email=f"c{n}@example.com", tags=["t"]) for n in range(8)
    ]
    client = api(stack, key)
    page = client.get("/external/v1/contacts", params={"limit": 1})
    cursor = page.json()["data"]["pagination"]["next_cursor"]
    assert cursor, page.text
    updates = [
        client.put(f"/external/v1/contacts/{c}", json={"position": "Fuzzed"}, headers=ASYNC)
        .json()["data"]["update_id"]
        for c in contacts[:3]
    ]
    return key, contacts, updates, cursor


def test_the_gateway_conforms_to_its_own_schema(stack: Stack, tmp_path: Path) -> None:
    key, contacts, updates, cursor = fuzz_account(stack)
    har = tmp_path / "run.har"
    args = [
        str(ST), "run", f"{stack.base_url}/openapi.json", "--checks", "all",
        # Both ways of sending the key, agreeing (two that disagree are refused with 401).
        "--header", f"X-API-Key: {key}", "--header", f"Authorization: Bearer {key}",
        "--max-examples", str(EXAMPLES),
        "--continue-on-failure", "--no-color", "--request-timeout", "30",
        "--report", "har", "--report-har-path", str(har),
        *(["--seed", SEED] if SEED else []),
    ]
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
        "CONTACTSYNC_FUZZ_CONTACTS": ",".join(contacts), "CONTACTSYNC_FUZZ_CURSOR": cursor,
        "CONTACTSYNC_FUZZ_UPDATES": ",".join(updates),
    }
    run = subprocess.run(
        args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3000, check=False
    )
    output = run.stdout + run.stderr
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(int(e["response"]["status"]) for e in entries)
    summary = f"{len(entries)} requests, by status {dict(sorted(statuses.items()))}"
    print(f"\nschemathesis ({'seed ' + SEED if SEED else 'random seed'}): {summary}")
    print("\n".join(output.splitlines()[-14:]))
    assert run.returncode == 0, output[-20_000:]
    assert not [s for s in statuses if s >= 500], summary
    # What was reached: successes on reads and writes, and the documented refusals.
    assert len(entries) >= 20 * EXAMPLES, summary
    for status in (200, 201, 202, 400, 401, 404, 405):
        assert statuses[status], summary
