"""Dead letters for real: a database that refuses an update's writes past every retry.

The fault is PostgreSQL's own: the test holds `LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE`
in an open transaction, so each attempt waits out the worker's lock timeout (3 s, a transient
failure). Once the lock is gone, `contactsync dead-letters replay` applies the update with its
original sequence, so a later update of the same field still wins.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import psycopg
import pytest

from bench.faults.oracle import stream_events, wait_drained
from bench.faults.services import Stack, Tenant
from contactsync.db import Database
from tests.faults.reads import contact_row, put_async, record_of, wait_status
from tests.support import ROOT

pytestmark = pytest.mark.slow  # a fault stack of its own


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, env=stack.env(),
        capture_output=True, text=True, timeout=60,
    )


def test_an_update_failing_every_retry_is_parked_listed_and_replayed_in_sequence(
    fault_stack: Stack, faults_db: Database, tenant: Tenant
) -> None:
    stack = fault_stack
    stack.env_extra.update(CONTACTSYNC_MAX_RETRIES="1", CONTACTSYNC_RETRY_BACKOFF_MAX_SECONDS="1")
    base_url = stack.start_gateway("g1")
    stack.start_worker("w1")
    stack.wait_gateways()
    stack.wait_workers()
    contact_id = tenant.contact_ids[0]
    dsn = stack.database_url.replace("postgresql+psycopg://", "postgresql://")

    with psycopg.connect(dsn) as holder:  # a transaction stays open until the block ends
        holder.execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")
        parked = put_async(base_url, tenant.key, contact_id,
                           {"position": "Lead", "company": "Acme"})
        failed = wait_status(faults_db, parked, "failed", timeout=45)
        holder.rollback()
    assert failed.error == {"code": "TRANSIENT_FAILURE", "message": "Failed after every retry."}
    original_seq = failed.seq

    listed = cli(stack, "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    (letter,) = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert letter["update_id"] == parked and letter["contact_id"] == contact_id
    assert letter["fields"] == ["company", "position"]
    assert letter["error"]["code"] == "TRANSIENT_FAILURE"

    later = put_async(base_url, tenant.key, contact_id, {"position": "CTO"})
    later_seq = wait_status(faults_db, later, "applied").seq
    assert later_seq > original_seq

    replayed = cli(stack, "dead-letters", "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.split() == ["queued", parked]
    record = wait_status(faults_db, parked, "applied")
    assert record.seq == original_seq  # replayed with its own sequence, not a new one
    assert record.changed_fields == ["company"]  # its position is older than the CTO's
    row = contact_row(faults_db, contact_id)
    assert (row.position, row.company) == ("CTO", "Acme")
    assert row.field_seqs["position"] == later_seq
    assert row.field_seqs["company"] == original_seq

    again = cli(stack, "dead-letters", "list")
    assert again.stdout == "" and "no dead letters" in again.stderr
    redis = stack.client()
    try:
        # (The relay publishes the replay's event a moment after its record commits.)
        assert wait_drained(faults_db, redis, [parked, later], timeout=30)
        events = [e for e in stream_events(redis) if e.get("update_id") == parked]
    finally:
        redis.close()
    assert len(events) == 1 and events[0]["sequence"] == original_seq
    assert record_of(faults_db, later) is not None
