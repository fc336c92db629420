"""`python -m bench.apply_cpu`: the CPU a bulk update costs the worker's apply and the relay,
in one process, each beside a raw baseline doing the same database work by hand.

- apply: `apply_batch` on 200-update batches (one field each, distinct contacts, as section
  (c) sends them), against raw SQL of the same batches: psycopg `executemany` of the
  contacts' UPDATEs, one transaction a batch, no merge, no record, no event.
- relay: `relay_once` over as many outbox events, against a raw pass: the same SELECT … FOR
  UPDATE SKIP LOCKED, one pipeline of XADDs, a DELETE by array, COMMIT.

Each figure is the client's CPU (`time.process_time`) and its PostgreSQL backend's (from
/proc: the server runs on this machine) per update, with the wall time. Rounds alternate ours
and the baseline; the table shows medians. A private Redis and a fresh database, as `python
-m bench` uses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson
import psycopg
from redis import Redis
from sqlalchemy import delete, insert, text

from bench import services
from bench.costs import tree_cpu_seconds
from contactsync.batch_apply import apply_batch
from contactsync.db import Database
from contactsync.models import Contact, OutboxEvent
from contactsync.settings import Settings
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate
from tasks.relay import relay_once

BATCH = 200


def _measure(run: Callable[[], int], backend_pid: Callable[[], int]) -> tuple[float, ...]:
    """Run once; return (client CPU µs, PostgreSQL CPU µs, wall µs) per item."""
    pid = backend_pid()
    pg, cpu, wall = tree_cpu_seconds(pid), time.process_time(), time.perf_counter()
    items = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pg = tree_cpu_seconds(pid) - pg
    return tuple(1e6 * x / items for x in (cpu, pg, wall))


class _Bench:
    def __init__(self, settings: Settings, account: str, contacts: list[str]) -> None:
        self.db = Database(settings)
        self.redis = Redis.from_url(settings.redis_url)
        self.settings = settings
        self.account = account
        self.contacts = contacts
        self.raw = psycopg.connect(settings.database_url.replace("+psycopg", ""))
        self.seq = 0
        self.events = 0
        with self.db.unit_of_work() as session:  # one pooled connection: the same backend
            self.pid = int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def batches(self, count: int) -> list[list[AcceptedUpdate]]:
        out = []
        for _ in range(count):
            batch = []
            for j in range(BATCH):
                self.seq += 1
                batch.append(AcceptedUpdate(
                    f"upd_bench{self.seq:014d}", self.account,
                    self.contacts[j % len(self.contacts)], self.seq, isoformat(utcnow()),
                    {"company": f"C{self.seq}"}, "contacts.bulk",
                ))
            out.append(batch)
        return out

    def ours_apply(self, batches: list[list[AcceptedUpdate]]) -> int:
        for batch in batches:
            with self.db.unit_of_work() as session:
                apply_batch(session, batch, utcnow(), with_commit=True)
        return sum(map(len, batches))

    def raw_apply(self, batches: list[list[AcceptedUpdate]]) -> int:
        for batch in batches:
            with self.raw.transaction(), self.raw.cursor() as cursor:
                cursor.executemany(
                    "UPDATE contacts SET company = %s, updated_at = now() WHERE id = %s",
                    [(u.patch["company"], u.contact_id) for u in batch],
                )
        return sum(map(len, batches))

    def fill_outbox(self, count: int) -> None:
        """Replace the outbox (the apply's own events too) with `count` events."""
        now = utcnow()
        first, self.events = self.events, self.events + count
        contact = {"id": self.contacts[0], "name": "Bench", "company": "C", "tags": [],
                   "custom_fields": {}, "external_ids": {}}
        with self.db.unit_of_work() as session:
            session.execute(delete(OutboxEvent))
            session.execute(insert(OutboxEvent), [{
                "event_id": f"evt_relay{i:014d}", "created_at": now,
                "payload": orjson.dumps({
                    "id": f"evt_relay{i:014d}", "type": "contact.updated",
                    "account_id": self.account, "contact_id": self.contacts[0],
                    "sequence": i, "occurred_at": isoformat(now),
                    "changes": {"company": {"old": "B", "new": "C"}}, "contact": contact,
                }).decode(),
            } for i in range(first, self.events)])

    def ours_relay(self) -> int:
        published = 0
        while count := relay_once(self.db, self.redis, self.settings):
            published += count
        return published

    def raw_relay(self) -> int:
        published = 0
        stream, limit = self.settings.events_stream, self.settings.relay_batch_size
        while True:
            with self.raw.transaction(), self.raw.cursor() as cursor:
                rows = cursor.execute(
                    "SELECT id, payload FROM outbox ORDER BY id LIMIT %s "
                    "FOR UPDATE SKIP LOCKED", (limit,),
                ).fetchall()
                if not rows:
                    return published
                with self.redis.pipeline(transaction=False) as pipe:
                    for _, payload in rows:
                        pipe.xadd(stream, {"event": payload})
                    pipe.execute()
                cursor.execute("DELETE FROM outbox WHERE id = ANY(%s)", ([r[0] for r in rows],))
                published += len(rows)

    def raw_pid(self) -> int:
        return int(self.raw.info.backend_pid)


def _account_of(settings: Settings, contact_id: str) -> str:
    db = Database(settings)
    try:
        with db.reading() as session:
            contact = session.get(Contact, contact_id)
            assert contact is not None
            return contact.account_id
    finally:
        db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_cpu", description=__doc__)
    parser.add_argument("--batches", type=int, default=50, help="batches of 200 a round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, \
            services.private_redis() as redis_url, \
            services.fresh_database("postgresql", Path(tmp)) as url:
        settings = Settings(database_url=url, redis_url=redis_url)
        _, contacts = services.seed(settings, 1000)
        bench = _Bench(settings, _account_of(settings, contacts[0]), contacts)
        results: dict[str, list[tuple[float, ...]]] = {}
        events = args.batches * BATCH
        bench.ours_apply(bench.batches(5))  # warm: pool, statements, the table's pages
        bench.raw_apply(bench.batches(5))
        for _ in range(args.rounds):
            for name, apply in (("apply, ours", bench.ours_apply),
                                ("apply, raw UPDATEs", bench.raw_apply)):
                batches = bench.batches(args.batches)
                pid = bench.raw_pid if "raw" in name else (lambda: bench.pid)
                results.setdefault(name, []).append(_measure(partial(apply, batches), pid))
            for name, relay in (("relay, ours", bench.ours_relay),
                                ("relay, raw pass", bench.raw_relay)):
                bench.fill_outbox(events)
                pid = bench.raw_pid if "raw" in name else (lambda: bench.pid)
                results.setdefault(name, []).append(_measure(relay, pid))
        bench.raw.close()
        bench.db.dispose()
    print(f"\n{args.rounds} rounds of {events} updates (medians), CPU and wall per update:")
    print("| path | client CPU µs | PostgreSQL CPU µs | wall µs |\n|---|---|---|---|")
    for name, runs in results.items():
        cpu, pg, wall = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"| {name} | {cpu:.1f} | {pg:.1f} | {wall:.1f} |")
    shown = sys.argv[1:] if argv is None else argv
    print(f"\ncommand: python -m bench.apply_cpu {' '.join(shown)}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
