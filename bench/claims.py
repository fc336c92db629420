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
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

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


def _case(workdir: Path, backlog: int, queued: str, analyze: bool, rounds: int) -> float:
    with fresh_database("postgresql", workdir) as url:
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as raw:
            raw.execute("INSERT INTO accounts VALUES ('acc_bench', 'bench', now())")
            for endpoint_id in ("whk_dead", "whk_live"):
                raw.execute(_ENDPOINT, (endpoint_id,))
            raw.execute(_BACKLOG.format(queued=QUEUED[queued]),  # type: ignore[arg-type]
                        {"contacts": backlog // 10, "backlog": backlog})
            raw.execute(_LIVE)  # type: ignore[arg-type]
            if analyze:
                raw.execute("ANALYZE")
        settings = Settings(database_url=url)
        db = Database(settings)
        try:
            took = []
            for _ in range(rounds):
                started = time.perf_counter()
                with db.unit_of_work() as session:
                    claims = claim_due(session, settings, utcnow())
                    session.rollback()
                took.append(time.perf_counter() - started)
                handed = {c.endpoint_id: len(c.delivery_ids) for c in claims}
                assert handed == {"whk_live": 10}, handed
        finally:
            db.dispose()
    return statistics.median(took) * 1000


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


if __name__ == "__main__":
    main()
