"""The fault scenarios: a sustained load through the real gateway, one fault in the middle.

Each scenario starts its own Redis and processes on the faults database, drives the load,
injects its fault once `fault_at` of the updates have been answered, lets everything drain,
and checks the outcome against the oracle (`bench/faults/oracle.py`). The pytest quick form
and `python -m bench.faults` run the very same functions at different sizes.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from bench.faults.load import Load
from bench.faults.oracle import Report, check, wait_drained
from bench.faults.recovery import RECOVERY_SECONDS, RecoveryClock, held_updates
from bench.faults.services import RedisServer, Stack, empty_tables, restart_postgres, seed
from bench.processes import wait_until
from contactsync.db import Database
from contactsync.settings import Settings

UPDATES_LIST = "contacts.updates"


@dataclass(frozen=True)
class Size:
    updates: int
    contacts: int
    rate: float  # updates per second, all clients together
    drain_seconds: float = 120
    fault_at: float = 0.35  # the fault strikes once this share of the updates was answered


# Eight seconds of load at 60 updates/s; the fault strikes two seconds in.
QUICK = Size(updates=480, contacts=6, rate=60, drain_seconds=90, fault_at=0.25)


def long_form(updates: int) -> Size:
    return Size(updates=updates, contacts=24, rate=400, drain_seconds=600)


@dataclass
class Run:
    """What a scenario's fault step may use while the load runs."""

    stack: Stack
    load: Load
    notes: list[str]
    after_load: list[Callable[[], None]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    recovery_seconds: float | None = None


@contextmanager
def running(
    name: str, database_url: str, work_dir: Path, *, workers: int = 1, start_workers: bool = True,
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Start a scenario's Redis, worker(s) and gateway; stop them all afterwards."""
    log_dir = work_dir / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    log_dir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(log_dir / "redis-data", log_dir)
    stack = Stack(database_url, redis, log_dir, env_extra=dict(env or {}))
    try:
        redis.start()
        stack.start_gateway("g1")
        if start_workers:
            for index in range(workers):
                stack.start_worker(f"w{index + 1}")
        stack.wait_gateways()
        stack.wait_workers()
        yield stack
    finally:
        stack.close()


def run_scenario(
    name: str, fault: Callable[[Run], None], database_url: str, work_dir: Path, size: Size,
    *, start_workers: bool = True, env: dict[str, str] | None = None,
) -> Report:
    """Run the load with `fault` in the middle; return the checked report."""
    db = Database(Settings(database_url=database_url))
    started = time.monotonic()
    try:
        empty_tables(db)
        tenant = seed(db, size.contacts)
        initial = {cid: _initial(i) for i, cid in enumerate(tenant.contact_ids)}
        with running(name, database_url, work_dir, start_workers=start_workers,
                     env=env) as stack:
            load = Load(
                [stack.url("g1")], tenant.key, tenant.contact_ids, total=size.updates,
                rate=size.rate, seed=len(name), max_seconds=size.updates / size.rate * 4 + 60,
            )
            run = Run(stack, load, [])
            load.start()
            try:
                load.wait_sent(int(size.updates * size.fault_at))
                fault(run)
                mark = load.log.count()
                load.join()
            finally:
                load.stop()  # at once, should the fault step have failed
            for step in run.after_load:
                step()
            redis = stack.client()
            try:
                ids = [s.update_id for s in load.log.accepted() if s.update_id]
                if not wait_drained(db, redis, ids, size.drain_seconds):
                    run.notes.append(f"not drained within {size.drain_seconds:.0f} s")
                report = check(name, load.log, db, redis, tenant.account_id, initial)
            finally:
                redis.close()
        report.notes += run.notes
        report.counters = run.counters
        report.recovery_seconds = run.recovery_seconds
        report.accepted_after_fault = len(
            [s for s in load.log.sent[mark:] if s.status is not None and 200 <= s.status < 300]
        )
        report.seconds = time.monotonic() - started
        return report
    finally:
        db.dispose()


def _initial(index: int) -> dict[str, Any]:
    return {"name": f"Contact {index}", "email": None, "phone": None, "company": None,
            "position": None, "linkedin_url": None, "tags": [], "custom_fields": {}}


def worker_sigkill(run: Run) -> None:
    """SIGKILL the worker (main process, pool, relay) mid-load; a supervisor restarts it.

    It dies with messages in hand (its pool processes stopped a moment before, as tasks
    waiting on the database would be), and the clock runs from its death until every update
    those messages name is applied: within RECOVERY_SECONDS (DESIGN §3), with the default
    visibility timeout of 300 s.
    """
    redis = run.stack.client()
    try:
        frozen = run.stack.freeze_pool("w1")
        assert frozen, "found no pool process of worker w1 to stop"
        # Messages keep arriving while the load runs (a few seconds more); on a loaded machine
        # the first may take a while to reach the worker. Any `unacked` entry is not enough:
        # it may be another task's, or one a pool process finished just before it stopped.
        def holds_an_update() -> bool:
            held, vanished = held_updates(redis)
            return len(held) > vanished

        try:
            wait_until(holds_an_update, timeout=60, interval=0.02)
        except AssertionError:
            raise AssertionError(
                f"worker w1 ({frozen} pool processes stopped) took no message in 60 s; load "
                f"sent {run.load.log.count()}, accepted {len(run.load.log.accepted())}, queued "
                f"now {redis.llen('contacts.updates')}+{redis.llen('contacts.bulk')}"
            ) from None
        run.stack.kill_worker("w1")
        held, vanished = held_updates(redis)
    finally:
        redis.close()
    clock = RecoveryClock(run.stack.database_url, held, timeout=RECOVERY_SECONDS * 4)
    time.sleep(0.5)
    run.stack.start_worker("w1")
    run.notes.append(f"worker SIGKILLed holding {len(held)} updates ({vanished} of them in no "
                     "`unacked` entry), restarted at once")
    run.counters.update(held=len(held), vanished=vanished)

    def recovered() -> None:
        run.recovery_seconds = clock.result()
        if run.recovery_seconds is None or run.recovery_seconds > RECOVERY_SECONDS:
            run.notes.append(f"VIOLATION: the dead worker's updates took over "
                             f"{RECOVERY_SECONDS:.0f} s to be applied")

    run.after_load.append(recovered)


def redis_sigkill(run: Run, down_seconds: float = 3.0) -> None:
    """SIGKILL Redis mid-load; bring it back on its own files after `down_seconds`."""
    run.stack.redis.kill()
    time.sleep(down_seconds)
    run.stack.redis.start()
    run.notes.append(f"Redis SIGKILLed, back on its files after {down_seconds:.0f} s")


def postgres_restart(run: Run) -> None:
    took = restart_postgres()
    run.notes.append(f"PostgreSQL restarted ({took:.1f} s)")


# A warm shutdown finishes the tasks in hand (milliseconds each) and stops: about 2 s here.
# billiard's own wait made it 30 s now and then (worker/signals.py, POOL_EXIT_WAIT_TRIES).
SIGTERM_EXIT_SECONDS = 15


def worker_sigterm(run: Run) -> None:
    """SIGTERM the worker mid-load: warm shutdown; then start it again."""
    took = run.stack.terminate_worker("w1")
    redis = run.stack.client()
    try:
        unacked = int(redis.hlen("unacked"))
    finally:
        redis.close()
    run.notes.append(f"worker SIGTERMed, exited in {took:.1f} s, left {unacked} unacked")
    if unacked:
        run.notes.append("VIOLATION: warm shutdown left messages unacknowledged")
    if took > SIGTERM_EXIT_SECONDS:
        run.notes.append(f"VIOLATION: warm shutdown took over {SIGTERM_EXIT_SECONDS} s")
    run.stack.start_worker("w1")


# Atomically (no moment when a message is in neither the queue nor a worker): shuffle every
# waiting message and add one copy of about half of those never copied before.
# KEYS[1]: the queue; KEYS[2]: a set of the task ids copied so far. ARGV[1]: a random seed.
# Returns {messages shuffled, copies added}.
SHUFFLE = """
math.randomseed(tonumber(ARGV[1]))
local messages = redis.call('LRANGE', KEYS[1], 0, -1)
if #messages == 0 then return {0, 0} end
local batch, copies = {}, 0
for _, message in ipairs(messages) do
  table.insert(batch, message)
  local id = cjson.decode(message)['headers']['id']
  if math.random() < 0.5 and redis.call('SADD', KEYS[2], id) == 1 then
    table.insert(batch, message)
    copies = copies + 1
  end
end
for i = #batch, 2, -1 do
  local j = math.random(i)
  batch[i], batch[j] = batch[j], batch[i]
end
redis.call('DEL', KEYS[1])
for start = 1, #batch, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(batch, start, math.min(start + 999, #batch)))
end
return {#messages, copies}
"""
COPIED = "faults:copied"  # the shuffler's own key, beside the stack's


class Shuffler:
    """Shuffle the waiting messages every 0.2 s, copying each about every other one once."""

    def __init__(self, redis: Redis, seed: int) -> None:
        self.redis = redis
        self.rng = random.Random(seed)
        self.script = redis.register_script(SHUFFLE)
        self.stop = threading.Event()
        self.passes = self.shuffled = self.duplicated = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="shuffler")

    def _run(self) -> None:
        for _ in range(10_000):
            if self.stop.wait(0.2):
                return
            self.once()

    def once(self) -> None:
        shuffled, copies = self.script(
            keys=[UPDATES_LIST, COPIED], args=[self.rng.randrange(1, 2**31)]
        )
        if shuffled:
            self.passes += 1
            self.shuffled += int(shuffled)
            self.duplicated += int(copies)


def duplicates_and_shuffles(run: Run) -> None:
    """Messages piled up with no worker; shuffle them, copy half, and go on while a worker runs.

    Installed as the fault step of a scenario started without workers: the shuffler keeps
    going (every 0.2 s) until the load has ended, so messages already duplicated and shuffled
    meet more copies while the worker applies them, two pool processes at once.
    """
    redis = run.stack.client()
    shuffler = Shuffler(redis, seed=5)
    shuffler.once()
    shuffler.thread.start()
    run.stack.start_worker("w1")
    run.stack.wait_workers()

    def finish() -> None:
        shuffler.stop.set()
        shuffler.thread.join(10)
        shuffler.once()
        redis.close()
        run.notes.append(
            f"{shuffler.shuffled} messages shuffled in {shuffler.passes} passes, "
            f"{shuffler.duplicated} delivered twice"
        )
        run.counters.update(shuffled=shuffler.shuffled, duplicated=shuffler.duplicated)

    run.notes.append("worker started after a backlog had piled up")
    run.after_load.append(finish)


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[Run], None]
    start_workers: bool = True
    disturbs_others: bool = False  # restarts a service shared with other people's tests
    env: dict[str, str] = field(default_factory=dict)  # on top of FAULT_ENV

    def run(self, database_url: str, work_dir: Path, size: Size) -> Report:
        return run_scenario(
            self.name, self.fault, database_url, work_dir, size,
            start_workers=self.start_workers, env=self.env,
        )


# The promise about a dead worker holds with the default visibility timeout, not the short one
# the other scenarios run with.
DEFAULT_VISIBILITY = str(Settings.model_fields["visibility_timeout_seconds"].default)

SCENARIOS = [
    Scenario("worker SIGKILL", worker_sigkill,
             env={"CONTACTSYNC_VISIBILITY_TIMEOUT_SECONDS": DEFAULT_VISIBILITY}),
    Scenario("Redis SIGKILL", redis_sigkill),
    Scenario("PostgreSQL restart", postgres_restart, disturbs_others=True),
    Scenario("duplicates + shuffled order", duplicates_and_shuffles, start_workers=False),
    Scenario("worker SIGTERM", worker_sigterm),
]


def table(reports: list[Report]) -> str:
    """Return the reports as one Markdown table."""
    head = ("| scenario | sent | 2xx | 503 | other | applied | lost | failed | applied twice "
            "| event ids / changing updates | re-published | contacts ≠ oracle | ghosts "
            "| slowest 503 | recovery | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        lines.append(
            f"| {r.scenario} | {r.sent} | {r.accepted} | {r.unavailable} | {r.other} "
            f"| {r.applied} | {r.lost} | {r.failed} | {r.applied_twice} "
            f"| {r.events} / {r.changing} | {r.republished} | {r.state_mismatches} "
            f"| {r.ghosts} | {r.slowest_503:.1f} s | {_recovery(r)} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def _recovery(report: Report) -> str:
    if "held" not in report.counters:
        return "-"
    if report.recovery_seconds is None:
        return "timed out"
    return f"{report.recovery_seconds:.1f} s"
