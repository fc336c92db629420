"""A claim beside another endpoint's backlog: parked against due, in the same run.

`python -m bench.claims [--backlog 10000,40000] [--rounds 5]` makes a fresh PostgreSQL
database per case with two endpoints of one account:
- a dead one, whose contacts each have a head waiting for its retry in an hour and nine
  deliveries queued behind it (`backlog` in all), older than anything else;
- a live one with ten due deliveries.

It times `claim_due` (one dispatcher pass, rolled back) with the queued deliveries stored
as the code before session 9 stored them (due, behind their heads) and as it stores them
now (parked), each after ANALYZE and before it (a new table, as in the bench's runs);
each figure is the median of the rounds. Both must hand the live endpoint its ten.

Then the same beside a slow endpoint that answers (nothing parked: its heads wait for no
retry), its tasks all busy, and with one free (that claim takes its heads too).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.services import fresh_database
from contactsync.db import Database
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.webhook_claims import claim_due

_ENDPOINT = """INSERT INTO webhook_endpoints (id, account_id, url, events, description, enabled,
    secret_ciphertext, created_at, updated_at)
    VALUES (%s, 'acc_bench', 'https://x.example/', '["contact.updated"]', '', true, 'c', now(),
            now())"""
# A tenth of the rows are heads (attempted, next try in an hour), the rest queued behind them.
_BACKLOG = """INSERT INTO webhook_deliveries (endpoint_id, event_id, contact_id, sequence,
    status, attempts, next_attempt_at, created_at)
    SELECT 'whk_dead', 'evt_d' || g, 'cnt_' || (g %% %(contacts)s), g, 'pending',
           CASE WHEN g <= %(contacts)s THEN 3 ELSE 0 END,
           CASE WHEN g <= %(contacts)s THEN now() + interval '1 hour' ELSE {queued} END,
           now() - interval '1 hour'
    FROM generate_series(1, %(backlog)s) g"""
_LIVE = """INSERT INTO webhook_deliveries (endpoint_id, event_id, contact_id, sequence, status,
    attempts, next_attempt_at, created_at)
    SELECT 'whk_live', 'evt_l' || g, 'cnt_l' || g, g, 'pending', 0, now(), now()
    FROM generate_series(1, 10) g"""
QUEUED = {"due": "now() - interval '1 hour'", "parked": "'9999-01-01'::timestamptz"}
# A slow endpoint that answers: every contact's head due (older than anything else), nine
# deliveries due behind each (not parked: the heads wait for no retry), and `busy` of its
# heads in flight, one task each.
_SLOW = """INSERT INTO webhook_deliveries (endpoint_id, event_id, contact_id, sequence,
    status, attempts, next_attempt_at, created_at, claim_token, claimed_until)
    SELECT 'whk_slow', 'evt_s' || g, 'cnt_' || (g %% %(contacts)s), g, 'pending', 0,
           now() - interval '1 hour', now() - interval '1 hour',
           CASE WHEN g <= %(busy)s THEN 'task' || g END,
           CASE WHEN g <= %(busy)s THEN now() + interval '1 minute' END
    FROM generate_series(1, %(backlog)s) g"""


def _endpoints(raw: psycopg.Connection[Any], other: str) -> None:
    """The bench's account with two endpoints: `other` and the live one."""
    raw.execute("INSERT INTO accounts VALUES ('acc_bench', 'bench', now())")
    for endpoint_id in (other, "whk_live"):
        raw.execute(_ENDPOINT, (endpoint_id,))


def _case(workdir: Path, backlog: int, queued: str, analyze: bool, rounds: int) -> float:
    with fresh_database("postgresql", workdir) as url:
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as raw:
            _endpoints(raw, "whk_dead")
            raw.execute(_BACKLOG.format(queued=QUEUED[queued]),  # type: ignore[arg-type]
                        {"contacts": backlog // 10, "backlog": backlog})
            raw.execute(_LIVE)  # type: ignore[arg-type]
            if analyze:
                raw.execute("ANALYZE")
        took, handed = _time_claims(Settings(database_url=url), rounds)
    assert handed == {"whk_live": 10}, handed
    return took


def _time_claims(settings: Settings, rounds: int) -> tuple[float, dict[str, int]]:
    """Return the median time of a dispatcher's pass (rolled back), and what it handed to each
    endpoint."""
    db = Database(settings)
    try:
        took = []
        for _ in range(rounds):
            started = time.perf_counter()
            with db.unit_of_work() as session:
                claims = claim_due(session, settings, utcnow())
                session.rollback()
            took.append(time.perf_counter() - started)
    finally:
        db.dispose()
    handed = {c.endpoint_id: 0 for c in claims}
    for c in claims:
        handed[c.endpoint_id] += len(c.delivery_ids)
    return statistics.median(took) * 1000, handed


def _slow_case(workdir: Path, backlog: int, free_slot: bool,
               rounds: int) -> tuple[float, dict[str, int]]:
    """Return the claim's time beside a slow endpoint, and how many each endpoint was handed
    (the live one all of its ten when the slow one has no free task; else it may wait for
    the next pass, its heads being newer than the dispatch batch of the slow one's)."""
    with fresh_database("postgresql", workdir) as url:
        settings = Settings(database_url=url)
        busy = settings.webhook_endpoint_max_tasks - (1 if free_slot else 0)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as raw:
            _endpoints(raw, "whk_slow")
            raw.execute(_SLOW,  # type: ignore[arg-type]
                        {"contacts": backlog // 10, "backlog": backlog, "busy": busy})
            raw.execute(_LIVE)  # type: ignore[arg-type]
            raw.execute("ANALYZE")
        took, handed = _time_claims(settings, rounds)
    assert free_slot or handed == {"whk_live": 10}, handed
    return took, handed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", default="10000,40000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("| queued behind heads | statistics | claim, queued due (before) | claim, parked (now) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for backlog in (int(b) for b in args.backlog.split(",")):
            for analyze in (True, False):
                due, parked = (_case(Path(tmp), backlog, queued, analyze, args.rounds)
                               for queued in ("due", "parked"))
                print(f"| {backlog:,} | {'analyzed' if analyze else 'none yet'} | "
                      f"{due:.1f} ms | {parked:.1f} ms |", flush=True)
        print("\n| a slow endpoint's deliveries, due, 9 behind each head | claim, its tasks all "
              "busy | claim, one task free | handed, one task free |")
        print("|---|---|---|---|")
        for backlog in (int(b) for b in args.backlog.split(",")):
            full, _ = _slow_case(Path(tmp), backlog, False, args.rounds)
            free, handed = _slow_case(Path(tmp), backlog, True, args.rounds)
            shares = ", ".join(f"{e.removeprefix('whk_')} {n}" for e, n in sorted(handed.items()))
            print(f"| {backlog:,} | {full:.1f} ms | {free:.1f} ms | {shares} |", flush=True)


if __name__ == "__main__":
    main()
