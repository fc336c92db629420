"""`python -m bench.sql_merge_probe`: the CPU a bulk update costs today's apply path
(`apply_batch`, writes sent with the COMMIT) against one set-based SQL statement that does the
batch's per-field last-writer-wins merge inside PostgreSQL (`sql_merge_probe.sql`).

Two shapes of 200-update batches, one field each: `distinct` (200 contacts) and `four` (50
contacts, four updates each). Each figure is the client's CPU, its PostgreSQL backend's CPU
(from /proc: the server runs on this machine) and the wall time per update; rounds alternate
the paths and the table shows medians. `--check N` instead runs N random batches of the same
kind through both paths, on twin contacts, and compares outcomes, contacts, update records and
events.

The statement is a measurement prototype of the plain subset (name, phone, company, position,
tags patches on existing contacts, addressed by id), NOT a product path. What it does not do,
or would be hard to make equal to contactsync/merge.py:
- duplicate check after a lock wait: one statement has one snapshot, taken before it waits on a
  contact's lock, so it misses the record of the delivery it waited for
- JSON number types: jsonb holds every number as numeric (1 and 1.0 equal, int or float lost)
- key order and compact bytes: jsonb sorts object keys; json_build_object writes spaces
- marker folding and chained failures: sequential in merge.py (a refusal changes what follows)
- byte bounds: custom-field limits count the bytes of orjson's output (`custom_fields_bytes`)
- identities and upserts: no identity claims or conflicts, no `match_on`, no created contacts
- equal sequences: two updates of a batch writing one field at one sequence both win here;
  merge.py refuses the second (the check draws distinct sequences)
- planner fragility: 13 CTEs whose cost hangs on the plan PostgreSQL picks for them
- two copies of the merge: the rule in Python and in SQL, kept equal by hand
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

from bench import services
from bench.costs import tree_cpu_seconds
from contactsync import pg_batch
from contactsync.batch_apply import apply_batch
from contactsync.db import Database
from contactsync.ids import event_id_for
from contactsync.settings import Settings
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate

STATEMENT = Path(__file__).with_suffix(".sql").read_text()
PLAIN_FIELDS = frozenset({"name", "phone", "company", "position", "tags"})
BATCH = 200
SHAPES = ("distinct", "four")
BENCH_CONTACTS = 1000
CHECK_CONTACTS = 60  # each path's share; the SQL path's are the next 60
CHECK_VALUES: dict[str, list[Any]] = {
    "name": ["Ann", "Bob", "Bench"], "phone": [None, "+1", "+2"],
    "company": [None, "A", "B", "C"], "position": [None, "CEO", "CTO"],
    "tags": [[], ["x"], ["x", "y"], ["y", "x"]],
}


def is_plain(update: AcceptedUpdate) -> bool:
    return update.match_on is None and update.patch.keys() <= PLAIN_FIELDS


def statement_params(updates: Sequence[AcceptedUpdate], now: datetime) -> dict[str, Any]:
    unique = list({u.update_id: u for u in updates}.values())
    rows = [
        {"update_id": u.update_id, "account_id": u.account_id, "contact_id": u.contact_id,
         "seq": u.seq, "received_at": u.received_at, "patch": u.patch,
         "event_id": event_id_for(u.update_id)}
        for u in unique
    ]
    return {"updates": orjson.dumps(rows).decode(), "now": now, "now_text": isoformat(now),
            "contact_ids": sorted({u.contact_id for u in unique}),
            "update_ids": [u.update_id for u in unique]}


def apply_batch_sql(
    session: Session, updates: Sequence[AcceptedUpdate], now: datetime
) -> list[tuple[Any, ...]]:
    """Run the statement in the session's transaction, sent with BEGIN and COMMIT: one round
    trip, as `apply_batch(with_commit=True)` pays two. The unit of work's own commit then
    finds the transaction over. Rows: update_id, status, changed_fields, duplicate."""
    assert all(is_plain(u) for u in updates), "the statement merges plain patches only"
    params = statement_params(updates, now)
    driver: Any = session.connection().connection.driver_connection
    begin = pg_batch._begins_here(driver)
    with driver.pipeline():
        if begin:
            driver.execute("BEGIN")
        cursor = driver.cursor()
        cursor.execute(STATEMENT, params)
        driver.execute("COMMIT")
    rows: list[tuple[Any, ...]] = cursor.fetchall()
    return rows


def _apply_py(db: Database, batches: list[list[AcceptedUpdate]]) -> None:
    for batch in batches:
        with db.unit_of_work() as session:
            apply_batch(session, batch, utcnow(), with_commit=True)


def _apply_sql(db: Database, batches: list[list[AcceptedUpdate]]) -> None:
    for batch in batches:
        with db.unit_of_work() as session:
            apply_batch_sql(session, batch, utcnow())


PATHS: dict[str, Callable[[Database, list[list[AcceptedUpdate]]], None]] = {
    "py": _apply_py, "sql": _apply_sql,
}


class _Bench:
    def __init__(self, url: str, account: str, contacts: list[str]) -> None:
        self.db = Database(Settings(database_url=url))
        self.raw_url = url.replace("+psycopg", "")
        self.account = account
        self.contacts = contacts
        self.seq = 0

    def batches(self, shape: str, count: int) -> list[list[AcceptedUpdate]]:
        out = []
        for k in range(count):
            batch = []
            for j in range(BATCH):
                self.seq += 1
                i = k * BATCH + j if shape == "distinct" else k * 50 + j % 50
                batch.append(AcceptedUpdate(
                    f"upd_{self.seq:012d}", self.account, self.contacts[i % len(self.contacts)],
                    self.seq, isoformat(utcnow()), {"company": f"C{self.seq}"}, "contacts.bulk",
                ))
            out.append(batch)
        return out

    def backend_pid(self) -> int:
        with self.db.unit_of_work() as session:
            return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def tidy(self) -> None:
        """Start each run from an empty outbox and fresh statistics, so that neither path pays
        for the rows the other left."""
        with psycopg.connect(self.raw_url, autocommit=True) as conn:
            conn.execute("TRUNCATE outbox")
            conn.execute("VACUUM ANALYZE contacts")
            conn.execute("VACUUM ANALYZE update_records")

    def measure(self, path: str, batches: list[list[AcceptedUpdate]]) -> tuple[float, ...]:
        """Run once; return (client CPU µs, PostgreSQL CPU µs, wall µs) per update."""
        pid = self.backend_pid()
        pg, cpu, wall = tree_cpu_seconds(pid), time.process_time(), time.perf_counter()
        PATHS[path](self.db, batches)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        pg = tree_cpu_seconds(pid) - pg
        # The pool's one connection served the whole run, else its backend's CPU is not all.
        assert self.backend_pid() == pid, "the run changed PostgreSQL backend"
        updates = sum(map(len, batches))
        return tuple(1e6 * x / updates for x in (cpu, pg, wall))


def run_bench(url: str, account: str, contacts: list[str], batches: int, rounds: int) -> None:
    bench = _Bench(url, account, contacts)
    for shape in SHAPES:  # warm: pool, statements, the tables' pages
        for path in PATHS:
            PATHS[path](bench.db, bench.batches(shape, 5))
    results: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for round_ in range(rounds):
        order = list(PATHS) if round_ % 2 == 0 else list(PATHS)[::-1]
        for shape in SHAPES:
            for path in order:
                run = bench.batches(shape, batches)
                bench.tidy()
                cpu, pg, wall = bench.measure(path, run)
                results.setdefault((shape, path), []).append((cpu, pg, wall))
                print(f"round {round_} {shape} {path}: client {cpu:.1f} µs, "
                      f"PostgreSQL {pg:.1f} µs, wall {wall:.1f} µs", flush=True)
    bench.db.dispose()
    print(f"\n{rounds} rounds of {batches * BATCH} updates (medians), CPU and wall per update:")
    print("| shape | path | client CPU µs | PostgreSQL CPU µs | client+PG µs | wall µs |")
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        for path in PATHS:
            runs = results[(shape, path)]
            cpu, pg, wall = (statistics.median(r[i] for r in runs) for i in range(3))
            both = statistics.median(r[0] + r[1] for r in runs)
            print(f"| {shape} | {path} | {cpu:.0f} | {pg:.0f} | {both:.0f} | {wall:.0f} |")


def _check_batch(
    rng: random.Random, base: int, used: set[int], sent: list[tuple[str, int, int, dict[str, Any]]]
) -> list[tuple[str, int, int, dict[str, Any]]]:
    """200 (update key, contact index or -1 for a missing contact, seq, patch): stale and
    chained sequences, some redeliveries of earlier ones, rare unknown contacts."""
    batch = []
    for _ in range(BATCH):
        if sent and rng.random() < 0.05:
            batch.append(rng.choice(sent))
            continue
        while (seq := rng.randrange(base - 500, base + 300)) in used:
            pass
        used.add(seq)
        fields = rng.sample(sorted(CHECK_VALUES), rng.choice([1, 1, 2, 3]))
        patch = {f: rng.choice(CHECK_VALUES[f]) for f in fields}
        contact = rng.randrange(CHECK_CONTACTS) if rng.random() > 0.01 else -1
        batch.append((f"{seq:010d}", contact, seq, patch))
    sent += batch
    return batch


def _event(payload: str, twin: dict[str, str]) -> list[list[Any]]:
    """An outbox payload as [key, value] pairs in its order, ids made comparable across the
    paths, the contact's created_at aside (the twins were made at different times)."""
    pairs: list[list[Any]] = json.loads(payload, object_pairs_hook=lambda kv: [list(x) for x in kv])
    for pair in pairs:
        if pair[0] in ("id", "update_id"):
            pair[1] = pair[1][5:]  # evt_P…, upd_P…: the path's tag off
        elif pair[0] == "contact_id":
            pair[1] = twin.get(pair[1], pair[1])
        elif pair[0] == "contact":
            pair[1] = [[k, twin.get(v, v) if k == "id" else v]
                       for k, v in pair[1] if k != "created_at"]
    return pairs


def _compare(what: str, python: Sequence[Any], sql: Sequence[Any]) -> bool:
    matched = sum(1 for a, b in zip(python, sql, strict=False) if a == b)
    extra = "" if len(sql) == len(python) else f" (sql has {len(sql)})"
    print(f"{what}: {matched} of {len(python)} matched{extra}")
    for a, b in zip(python, sql, strict=False):
        if a != b:
            print(f"  first mismatch:\n    python {a}\n    sql    {b}")
            break
    return matched == len(python) == len(sql)


def run_check(url: str, account: str, contacts: list[str], batches: int, seed: int) -> bool:
    """Apply the same random batches through `apply_batch` (contacts 0..59, update ids upd_P…)
    and through the statement (contacts 60..119, upd_S…); tell whether everything matched."""
    db = Database(Settings(database_url=url))
    rng = random.Random(seed)
    used: set[int] = set()
    sent: list[tuple[str, int, int, dict[str, Any]]] = []
    outcomes_py: list[Any] = []
    outcomes_sql: list[Any] = []
    for number in range(batches):
        batch = _check_batch(rng, 1300 + 300 * number, used, sent)
        now = utcnow()

        def updates(tag: str, offset: int, batch: list[Any] = batch, now: datetime = now,
                    ) -> list[AcceptedUpdate]:
            return [AcceptedUpdate(f"upd_{tag}{key}", account,
                                   contacts[c + offset] if c >= 0 else "cnt_missing",
                                   seq, isoformat(now), patch, "q")
                    for key, c, seq, patch in batch]

        with db.unit_of_work() as session:
            outs = apply_batch(session, updates("P", 0), now, with_commit=True)
        with db.unit_of_work() as session:
            rows = apply_batch_sql(session, updates("S", CHECK_CONTACTS), now)
        outcomes_py.append(sorted(
            (o.update.update_id[5:], o.status, o.changed_fields, o.duplicate) for o in outs
        ))
        outcomes_sql.append(sorted((r[0][5:], r[1], list(r[2]), r[3]) for r in rows))
    db.dispose()
    python_ids, sql_ids = contacts[:CHECK_CONTACTS], contacts[CHECK_CONTACTS:]
    twin = dict(zip(sql_ids, python_ids, strict=True))
    columns = ("name, email, phone, company, position, source, linkedin_url, tags, custom_fields,"
               " external_ids, field_seqs, updated_at")
    record_columns = ("substr(update_id, 6), seq, status, received_at, applied_at,"
                      " changed_fields::text, error::text")
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        def contact_rows(ids: list[str]) -> list[Any]:
            return conn.execute(f"SELECT {columns} FROM contacts WHERE id = ANY(%s) ORDER BY id",
                                (ids,)).fetchall()

        def record_rows(tag: str) -> list[Any]:
            return conn.execute(f"SELECT {record_columns} FROM update_records"
                                " WHERE update_id LIKE %s ORDER BY 1", (f"upd_{tag}%",)).fetchall()

        def payloads(tag: str) -> list[str]:
            return [p for (p,) in conn.execute(
                "SELECT payload FROM outbox WHERE event_id LIKE %s ORDER BY id", (f"evt_{tag}%",)
            )]

        events_py, events_sql = payloads("P"), payloads("S")
        results = [
            _compare("batches' outcomes", outcomes_py, outcomes_sql),
            _compare("contacts", contact_rows(python_ids), contact_rows(sql_ids)),
            _compare("update records", record_rows("P"), record_rows("S")),
            _compare("events (parsed, key order kept, created_at aside)",
                     [_event(p, twin) for p in events_py], [_event(p, twin) for p in events_sql]),
        ]
    if events_py and events_sql:
        print(f"first event's bytes: python {len(events_py[0])}, sql {len(events_sql[0])}")
    return all(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sql_merge_probe", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batches", type=int, default=30, help="batches of 200 a run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", type=int, metavar="N",
                        help="compare the two paths on N random batches instead of measuring")
    parser.add_argument("--seed", type=int, default=1, help="of --check's batches")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, \
            services.fresh_database("postgresql", Path(tmp)) as url:
        count = BENCH_CONTACTS if args.check is None else 2 * CHECK_CONTACTS
        _, contacts = services.seed(Settings(database_url=url), count)
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            row = conn.execute("SELECT account_id FROM contacts LIMIT 1").fetchone()
            assert row is not None
            account = str(row[0])
        if args.check is not None:
            matched = run_check(url, account, contacts, args.check, args.seed)
        else:
            run_bench(url, account, contacts, args.batches, args.rounds)
            matched = True
    shown = sys.argv[1:] if argv is None else argv
    print(f"\ncommand: python -m bench.sql_merge_probe {' '.join(shown)}".rstrip())
    return 0 if matched else 1


if __name__ == "__main__":
    raise SystemExit(main())
