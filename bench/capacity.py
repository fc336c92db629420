"""`python -m bench.capacity`: what one update costs each part, and whether the parts add up.

Starts a private Redis (append-only file on) and a private PostgreSQL cluster, so that every
CPU second, command, byte, row and WAL byte counted is this run's. Then four phases, each
with fresh processes: bulk batches and single async PUTs on one "host" (one gateway launcher
of 2 processes, one worker of 4 pool processes), then the same on two "hosts" (two gateway
launchers on their own ports, 1 process each, the load split between them; two workers with
their own Celery hostnames `host1@…`/`host2@…` and pools of 2), so that the process counts
match and the two layouts compete for the same cores.

Each phase: start, warm up, wait `--settle` seconds idle (PostgreSQL 15 flushes an idle
backend's statistics within 10 s; the window also gives the idle cost per second), snapshot,
load, wait until every update is finished and its event published, snapshot the process
trees and Redis, stop the processes, then read PostgreSQL's counters (a backend flushes its
statistics as it exits). Prints markdown tables: costs per update, idle costs, each host's
share, Redis commands per update, the updates a second one Redis and one PostgreSQL primary
carry at those costs, and the capacity arithmetic at 1x, 10x and 100x the rate one host
sustained here (and at `--reference` rates, a quiet machine's). `docs/scaling.md` is the model
built on it. `--quick` is the smoke form: tiny sizes, no figure to trust.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from redis import Redis

from bench import load, postgres, services
from bench.costs import Costs, PostgresCounters, Snapshot
from bench.processes import free_port, wait_until, worker_args
from contactsync import names
from contactsync.migrate import upgrade
from contactsync.settings import Settings

BATCH_ITEMS = 1000  # items per bulk request, as section (c) sends them


@dataclass(frozen=True)
class Layout:
    """Gateway launchers (processes each) and worker hosts (pool processes each)."""

    name: str
    gateways: tuple[int, ...]
    workers: tuple[int, ...]


ONE_HOST = Layout("1 host", gateways=(2,), workers=(4,))
TWO_HOSTS = Layout("2 hosts", gateways=(1, 1), workers=(2, 2))


@dataclass
class Run:
    settings: Settings
    pg_url: str
    key: str
    contacts: list[str]
    log_dir: Path
    seconds: float
    bulk_updates: int
    settle: float
    warmup: int
    _values: int = 0

    def values(self) -> int:
        """A number no earlier load used: each load's values differ from all before it, so
        that no update is a no-op for having written what was already there."""
        self._values += 10_000_000
        return self._values


@dataclass
class Phase:
    layout: Layout
    kind: str  # "bulk" or "single"
    round: int = 0  # 1, 2, … when the phases run more than once; else 0
    updates: int = 0
    seconds: float = 0.0
    costs: Costs | None = None
    idle: Costs | None = None
    idle_seconds: float = 0.0
    gateway_counts: dict[str, int] = field(default_factory=dict)
    worker_counts: dict[str, int] = field(default_factory=dict)
    recorded: int = 0  # update records the database gained

    @property
    def rate(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0

    @property
    def title(self) -> str:
        title = f"{self.layout.name}, {'bulk batches' if self.kind == 'bulk' else 'single PUTs'}"
        return f"{title}, round {self.round}" if self.round else title


@dataclass
class Started:
    gateways: dict[str, tuple[services.Service, int]]  # name → (launcher, port)
    workers: dict[str, tuple[services.Service, int]]  # name → (worker, metrics port)

    def roots(self) -> dict[str, int]:
        return {name: service.process.pid
                for name, (service, _) in {**self.gateways, **self.workers}.items()}

    def stop(self) -> None:
        for service, _ in [*self.workers.values(), *self.gateways.values()]:
            service.stop()


def _start(run: Run, layout: Layout) -> Started:
    started = Started({}, {})
    try:
        for i, processes in enumerate(layout.gateways, 1):
            port = free_port()
            env = services.env_for(run.settings)
            service = services.start(f"gateway{i}", [
                sys.executable, "-m", "cli", "gateway", "--port", str(port),
                "--workers", str(processes)], env, run.log_dir)
            started.gateways[f"gateway{i}"] = (service, port)
        for i, concurrency in enumerate(layout.workers, 1):
            metrics = free_port()
            env = services.env_for(run.settings, CONTACTSYNC_WORKER_METRICS_PORT=str(metrics))
            service = services.start(f"host{i}", worker_args(
                f"host{i}", concurrency, loglevel="WARNING"), env, run.log_dir)
            started.workers[f"host{i}"] = (service, metrics)
        for (_, port), processes in zip(started.gateways.values(), layout.gateways,
                                              strict=True):
            services.wait_for(lambda port=port: httpx.get(
                f"http://127.0.0.1:{port}/readyz").status_code == 200, "gateway")
            services.wait_listening(port, processes, "gateway")
        for _, metrics in started.workers.values():
            # The metrics server starts once the worker is ready (`worker_ready`).
            services.wait_for(lambda metrics=metrics: _worker_count(metrics) >= 0, "worker")
    except BaseException:
        started.stop()
        raise
    return started


def _worker_count(metrics_port: int) -> int:
    """Updates this worker host finished, from its own metrics (every status)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("contactsync_worker_updates_total{")))


def _gateway_count(port: int) -> int:
    """PUTs this gateway launcher accepted, from its own metrics (summed over its processes):
    wrk does not count the requests in flight when it stops, which were accepted all the same."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("contactsync_gateway_requests_total{")
                   and 'method="PUT"' in line and 'status="2' in line))


def _recorded(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM update_records").fetchone()
    assert row is not None
    return int(row[0])


def _outbox(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox").fetchone()
    assert row is not None
    return int(row[0])


def _wait_finished(run: Run, redis: Redis, target: int) -> float:
    """Wait until every accepted update is finished; return when (monotonic). Then wait until
    the relay published their events, so that its cost is in the figures too."""
    # Redis's pending set, not a count of the database's rows: that query would cost
    # PostgreSQL more than some of what is measured.
    wait_until(lambda: redis.zcard(names.PENDING_KEY) == 0, timeout=900, interval=0.02)
    finished = time.monotonic()
    wait_until(lambda: _recorded(run.pg_url) >= target, timeout=60)
    wait_until(lambda: _outbox(run.pg_url) == 0, timeout=120, interval=0.1)
    return finished


def _in_parallel(jobs: list[Callable[[], int]]) -> list[int]:
    results = [0] * len(jobs)
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            results[index] = jobs[index]()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _bulk(run: Run, port: int, count: int, offset: int, values: int) -> int:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                      headers={"X-API-Key": run.key}) as client:
        for start in range(offset, offset + count, BATCH_ITEMS):
            items = range(start, min(start + BATCH_ITEMS, offset + count))
            body = {"updates": [{"id": run.contacts[i % len(run.contacts)],
                                 "company": f"C{values + i}"} for i in items]}
            client.post("/external/v1/contacts/batch/update", json=body).raise_for_status()
    return count


def _single(run: Run, port: int, seconds: float, connections: int, values: int) -> int:
    result = load.wrk(f"http://127.0.0.1:{port}", run.key, len(run.contacts), seconds,
                      connections=connections, first=values)
    return result.requests - result.non_2xx


def _load(run: Run, kind: str, ports: list[int], bulk_updates: int, seconds: float) -> list[int]:
    values = run.values()
    if kind == "bulk":
        share = bulk_updates // len(ports)
        return _in_parallel([lambda i=i, port=port: _bulk(run, port, share, i * share, values)
                             for i, port in enumerate(ports)])
    connections = max(1, 64 // len(ports))
    # Each gateway's wrk numbers its values from a start of its own.
    return _in_parallel([
        lambda i=i, port=port: _single(run, port, seconds, connections, values + i * 1_000_000)
        for i, port in enumerate(ports)])


def _after_backends_exit(pg_url: str) -> PostgresCounters:
    """Read the counters once no other backend is connected to the run's database."""

    def others() -> int:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])

    wait_until(lambda: others() == 0, timeout=60)
    return PostgresCounters.read(pg_url)


def run_phase(run: Run, layout: Layout, kind: str, pg_root: int, round_: int) -> Phase:
    phase = Phase(layout, kind, round_)
    print(f"phase: {phase.title}", flush=True)
    redis = Redis.from_url(run.settings.redis_url)
    started = _start(run, layout)
    try:
        ports = [port for _, port in started.gateways.values()]
        roots = {**started.roots(), "postgres": pg_root}
        target = _recorded(run.pg_url) + sum(
            _load(run, kind, ports, run.warmup, 1) if kind == "bulk" else
            _load(run, kind, ports, 0, 1))
        _wait_finished(run, redis, target)
        idle_from = Snapshot.take(roots, redis, run.pg_url)
        idle_started = time.monotonic()
        time.sleep(run.settle)
        puts_before = [_gateway_count(port) for port in ports]
        counts_before = {name: _worker_count(m) for name, (_, m) in started.workers.items()}
        recorded_before = _recorded(run.pg_url)
        before = Snapshot.take(roots, redis, run.pg_url)
        phase.idle_seconds = time.monotonic() - idle_started
        phase.idle = Costs.between(idle_from, before, run.pg_url)
        began = time.monotonic()
        accepted = _load(run, kind, ports, run.bulk_updates, run.seconds)
        phase.seconds = _wait_finished(run, redis, recorded_before + sum(accepted)) - began
        if kind == "single":
            accepted = [_gateway_count(port) - puts_before[i] for i, port in enumerate(ports)]
        phase.updates = sum(accepted)
        phase.gateway_counts = dict(zip(started.gateways, accepted, strict=True))
        after = Snapshot.take(roots, redis, None)
        phase.worker_counts = {name: _worker_count(m) - counts_before[name]
                               for name, (_, m) in started.workers.items()}
        phase.recorded = _recorded(run.pg_url) - recorded_before
    finally:
        started.stop()
        redis.close()
    after.postgres = _after_backends_exit(run.pg_url)
    phase.costs = Costs.between(before, after, run.pg_url)
    print(f"  {phase.updates} updates in {phase.seconds:.1f} s: {phase.rate:.0f}/s", flush=True)
    return phase


# ---- the tables ----------------------------------------------------------------------------


def _per(value: float, count: int, scale: float = 1.0) -> str:
    return f"{value * scale / count:,.3f}" if count else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def costs_table(phases: list[Phase]) -> str:
    rows = []
    for p in phases:
        c, n = p.costs, p.updates
        assert c is not None
        ins, upd, dele = c.pg_rows
        rows.append([
            p.title, f"{n:,}", f"{p.rate:,.0f}",
            _per(c.sum_cpu("gateway"), n, 1000), _per(c.sum_cpu("host"), n, 1000),
            _per(c.cpu["postgres"], n, 1000), _per(c.cpu["redis"], n, 1000),
            _per(sum(c.redis_calls.values()), n), _per(c.redis_net_in, n),
            _per(c.redis_net_out, n), _per(c.pg_commits, n),
            f"{_per(ins, n)} / {_per(upd, n)} / {_per(dele, n)}", _per(c.wal, n),
        ])
    return _table(["phase", "updates", "updates/s", "gateway CPU-ms", "worker CPU-ms",
                   "PostgreSQL CPU-ms", "Redis CPU-ms", "Redis commands", "Redis bytes in",
                   "Redis bytes out", "PG commits", "PG rows ins / upd / del", "WAL bytes"],
                  rows)


def idle_table(phases: list[Phase]) -> str:
    rows = []
    for p in phases:
        c, s = p.idle, p.idle_seconds
        assert c is not None
        rows.append([p.title, f"{s:.1f}", _per(c.sum_cpu("gateway"), 1, 1000 / s),
                     _per(c.sum_cpu("host"), 1, 1000 / s), _per(c.cpu["postgres"], 1, 1000 / s),
                     _per(c.cpu["redis"], 1, 1000 / s),
                     _per(sum(c.redis_calls.values()), 1, 1 / s)])
    return _table(["phase", "idle s", "gateway CPU-ms/s", "worker CPU-ms/s",
                   "PostgreSQL CPU-ms/s", "Redis CPU-ms/s", "Redis commands/s"], rows)


def hosts_table(phases: list[Phase]) -> str:
    rows = []
    for p in phases:
        c = p.costs
        assert c is not None
        for name, count in [*p.gateway_counts.items(), *p.worker_counts.items()]:
            role = "accepted" if name.startswith("gateway") else "finished"
            rows.append([p.title, name, f"{count:,} {role}", f"{c.cpu[name]:.2f}",
                         _per(c.cpu[name], count, 1000)])
        rows.append([p.title, "gateways, sum", f"{sum(p.gateway_counts.values()):,}",
                     f"{c.sum_cpu('gateway'):.2f}",
                     _per(c.sum_cpu("gateway"), p.updates, 1000)])
        rows.append([p.title, "workers, sum", f"{sum(p.worker_counts.values()):,}",
                     f"{c.sum_cpu('host'):.2f}", _per(c.sum_cpu("host"), p.updates, 1000)])
        rows.append([p.title, "database: update records", f"{p.recorded:,}", "", ""])
    return _table(["phase", "part", "updates", "CPU s", "CPU-ms per update"], rows)


def commands_table(phases: list[Phase], top: int = 12) -> str:
    names_seen: dict[str, float] = {}
    for p in phases:
        assert p.costs is not None
        for name, calls in p.costs.redis_calls.items():
            names_seen[name] = max(names_seen.get(name, 0.0), calls / max(1, p.updates))
    chosen = sorted(names_seen, key=lambda name: -names_seen[name])[:top]
    rows = []
    for name in chosen:
        row = [name]
        for p in phases:
            assert p.costs is not None
            row.append(_per(p.costs.redis_calls.get(name, 0), p.updates))
        rows.append(row)
    return _table(["command (calls per update)", *[p.title for p in phases]], rows)


@dataclass(frozen=True)
class Limits:
    """What one Redis, one PostgreSQL primary and one host are taken to carry."""

    redis_cpu: float = 1.0  # CPU-seconds per second: Redis runs commands on one thread
    pg_cores: int = 32
    wal_mb: float = 200.0  # MB/s of WAL a primary writes and a standby replays, sustained
    net_mb: float = 1250.0  # MB/s: 10 Gbit/s
    host_cores: int = 16  # a gateway or worker host


def capacity_table(phases: list[Phase], limits: Limits, rates: dict[str, float]) -> str:
    """At 1x, 10x and 100x a phase's rate (or `rates[kind]`, when given), what each part
    needs, from the phase's costs per update."""
    rows = []
    for p in phases:
        c = p.costs
        assert c is not None and p.updates
        n = p.updates
        for factor in (1, 10, 100):
            rate = rates.get(p.kind, p.rate) * factor
            redis = rate * c.cpu["redis"] / n / limits.redis_cpu
            pg = rate * c.cpu["postgres"] / n / limits.pg_cores
            wal = rate * c.wal / n / 1e6 / limits.wal_mb
            net = rate * (c.redis_net_in + c.redis_net_out) / n / 1e6 / limits.net_mb
            gateways = rate * c.sum_cpu("gateway") / n
            workers = rate * c.sum_cpu("host") / n
            loads = {"Redis CPU": redis, "PostgreSQL CPU": pg, "WAL": wal, "Redis network": net}
            first = max(loads, key=lambda k: loads[k])
            rows.append([
                p.title, f"{factor}x", f"{rate:,.0f}", f"{redis * limits.redis_cpu:.2f} "
                f"({redis:.0%})", f"{pg * limits.pg_cores:.1f} ({pg:.0%})",
                f"{wal * limits.wal_mb:.1f} ({wal:.0%})", f"{net * limits.net_mb:.1f} ({net:.0%})",
                f"{gateways:.1f} ({gateways / limits.host_cores:.1f} hosts)",
                f"{workers:.1f} ({workers / limits.host_cores:.1f} hosts)",
                f"{first}" + (" **over**" if loads[first] > 1 else ""),
            ])
    return _table(["load", "rate", "updates/s", f"Redis CPU-s/s (of {limits.redis_cpu:g})",
                   f"PG cores (of {limits.pg_cores})", f"WAL MB/s (of {limits.wal_mb:g})",
                   f"Redis net MB/s (of {limits.net_mb:g})",
                   f"gateway cores ({limits.host_cores}-core hosts)",
                   f"worker cores ({limits.host_cores}-core hosts)", "first to saturate"], rows)


def ceilings_table(phases: list[Phase], limits: Limits) -> str:
    """The updates a second each shared part carries on its own, at a phase's costs."""

    def most(cost: float, limit: float, updates: int) -> str:
        return f"{limit * updates / cost:,.0f}" if cost > 0 else "-"

    rows = []
    for p in phases:
        c, n = p.costs, p.updates
        assert c is not None and n
        rows.append([
            p.title, most(c.cpu["redis"], limits.redis_cpu, n),
            most(c.redis_net_in + c.redis_net_out, limits.net_mb * 1e6, n),
            most(c.cpu["postgres"], limits.pg_cores, n), most(c.wal, limits.wal_mb * 1e6, n),
        ])
    return _table(["costs of", f"one Redis, CPU ({limits.redis_cpu:g} s/s)",
                   f"one Redis, network ({limits.net_mb:g} MB/s)",
                   f"one PostgreSQL primary, CPU ({limits.pg_cores} cores)",
                   f"one PostgreSQL primary, WAL ({limits.wal_mb:g} MB/s)"], rows)


def report(phases: list[Phase], limits: Limits, reference: dict[str, float]) -> str:
    one_host = [p for p in phases if p.layout == ONE_HOST]
    two_hosts = [p for p in phases if p.layout == TWO_HOSTS]
    parts = ["### Costs per update (CPU in milliseconds; Redis and PostgreSQL counters)",
             costs_table(phases),
             "### Idle costs per second (heartbeats, relay polls, sampling), not in the above",
             idle_table(phases),
             "### Each host's share (two-host phases) against the total",
             hosts_table(two_hosts),
             "### Redis commands per update (client calls and calls inside scripts)",
             commands_table(phases),
             "### Updates per second one shared part carries, at the costs per update above",
             ceilings_table(phases, limits),
             "### Capacity at 1x, 10x and 100x what one host sustained here",
             capacity_table(one_host, limits, {})]
    if reference:
        given = ", ".join(f"{kind} {rate:,.0f}/s" for kind, rate in reference.items())
        parts += [f"### Capacity at 1x, 10x and 100x the reference rates ({given}), "
                  "at the costs per update measured here",
                  capacity_table([p for p in one_host if p.kind in reference], limits,
                                 reference)]
    ratios = []
    for one in one_host:
        two = [p for p in two_hosts if (p.kind, p.round) == (one.kind, one.round)]
        if two and one.rate:
            ratios.append(f"- {one.title.removeprefix('1 host, ')}: 2 hosts / 1 host = "
                          f"{two[0].rate:,.0f} / "
                          f"{one.rate:,.0f} = {two[0].rate / one.rate:.2f}")
    parts += ["### Throughput, two hosts against one on the same cores", "\n".join(ratios)]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="wrk load of a single phase")
    parser.add_argument("--bulk-updates", type=int, default=30_000)
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=11,
                        help="idle seconds before each measured load (statistics flush)")
    parser.add_argument("--pg-cores", type=int, default=Limits.pg_cores)
    parser.add_argument("--wal-mb", type=float, default=Limits.wal_mb)
    parser.add_argument("--net-mb", type=float, default=Limits.net_mb)
    parser.add_argument("--host-cores", type=int, default=Limits.host_cores)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the four phases this many times, one round after another")
    parser.add_argument("--reference", default="",
                        help="rates to model besides the measured ones, e.g. "
                        "single=1933,bulk=4410 (from `python -m bench` on a quiet machine)")
    parser.add_argument("--quick", action="store_true", help="smoke form for CI")
    args = parser.parse_args(argv)
    try:
        reference = {kind: float(rate) for kind, rate in (
            item.split("=", 1) for item in args.reference.split(",") if item)}
    except ValueError:
        parser.error("--reference takes kind=rate pairs, e.g. single=1933,bulk=4410")
    if set(reference) - {"single", "bulk"}:
        parser.error("--reference knows the kinds single and bulk")
    if not postgres.available():
        raise SystemExit("bench.capacity needs PostgreSQL's initdb (a private cluster)")
    limits = Limits(pg_cores=args.pg_cores, wal_mb=args.wal_mb, net_mb=args.net_mb,
                    host_cores=args.host_cores)
    print(f"contactsync capacity on {platform.node()} ({os.cpu_count()} CPUs), "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp, \
            services.private_redis() as redis_url, postgres.private_postgres() as pg:
        upgrade(pg.sqlalchemy_url)
        settings = Settings(database_url=pg.sqlalchemy_url, redis_url=redis_url)
        key, ids = services.seed(settings, 50 if args.quick else args.contacts)
        run = Run(settings=settings, pg_url=pg.url, key=key, contacts=ids, log_dir=Path(tmp),
                  seconds=1 if args.quick else args.seconds,
                  bulk_updates=1000 if args.quick else args.bulk_updates,
                  settle=0.5 if args.quick else args.settle,
                  warmup=200 if args.quick else 2000)
        phases = [run_phase(run, layout, kind, pg.postmaster.pid,
                            round_ if args.rounds > 1 else 0)
                  for round_ in range(1, args.rounds + 1)
                  for layout in (ONE_HOST, TWO_HOSTS) for kind in ("bulk", "single")]
    print()
    print(report(phases, limits, reference))
    given = argv if argv is not None else sys.argv[1:]
    print(f"\ncommand: python -m bench.capacity {' '.join(given)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
