"""What a stretch of work cost each part: CPU of process trees, Redis and PostgreSQL counters.

Take a `Snapshot` before and after; their difference divided by the updates in between is the
cost per update. CPU comes from /proc: a process tree's CPU is, for every live process in it,
its own time plus the time of the children it has reaped (`cutime`/`cstime`), so a pool child
or a PostgreSQL backend that exits mid-run still counts (in its parent's reaped time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psycopg
from redis import Redis

TICKS = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    pids, seen = [root], {root}
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:  # a child forked by any thread is listed under that thread
            try:
                children = (task / "children").read_text().split()
            except FileNotFoundError:
                continue
            for child in map(int, children):
                if child not in seen:
                    seen.add(child)
                    pids.append(child)
    return pids


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by `root`, its descendants, and the descendants they reaped."""
    ticks = 0
    for pid in _descendants(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        # Fields after the command name (which may hold spaces): state is field 3, utime 14.
        rest = stat.rsplit(")", 1)[1].split()
        ticks += sum(int(value) for value in rest[11:15])  # utime, stime, cutime, cstime
    return ticks / TICKS


@dataclass
class RedisCounters:
    cpu_seconds: float
    calls: dict[str, int]
    net_in: int
    net_out: int

    @classmethod
    def read(cls, redis: Redis) -> RedisCounters:
        cpu = redis.info("cpu")
        stats = redis.info("stats")
        commands = redis.info("commandstats")
        return cls(
            cpu_seconds=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            calls={name.removeprefix("cmdstat_"): int(value["calls"])
                   for name, value in commands.items()},
            net_in=int(stats["total_net_input_bytes"]),
            net_out=int(stats["total_net_output_bytes"]),
        )


@dataclass
class PostgresCounters:
    commits: int
    inserted: int
    updated: int
    deleted: int
    wal_lsn: str

    @classmethod
    def read(cls, url: str) -> PostgresCounters:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted,"
                " pg_current_wal_lsn()::text FROM pg_stat_database"
                " WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        return cls(int(row[0]), int(row[1]), int(row[2]), int(row[3]), str(row[4]))


def wal_bytes(url: str, start: str, end: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)
                           ).fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class Snapshot:
    """CPU of each named process tree, and the counters of Redis and PostgreSQL, at one time."""

    trees: dict[str, float]
    redis: RedisCounters
    postgres: PostgresCounters | None = None

    @classmethod
    def take(cls, roots: dict[str, int], redis: Redis, pg_url: str | None) -> Snapshot:
        return cls(
            trees={name: tree_cpu_seconds(pid) for name, pid in roots.items()},
            redis=RedisCounters.read(redis),
            postgres=PostgresCounters.read(pg_url) if pg_url else None,
        )


@dataclass
class Costs:
    """The difference between two snapshots: totals, not yet divided by anything."""

    cpu: dict[str, float]  # seconds, per process tree (and `redis`)
    redis_calls: dict[str, int]
    redis_net_in: int
    redis_net_out: int
    pg_commits: int = 0
    pg_rows: tuple[int, int, int] = (0, 0, 0)  # inserted, updated, deleted
    wal: int = 0

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot, pg_url: str | None = None) -> Costs:
        cpu = {name: after.trees[name] - before.trees.get(name, 0.0) for name in after.trees}
        cpu["redis"] = after.redis.cpu_seconds - before.redis.cpu_seconds
        calls = {name: count - before.redis.calls.get(name, 0)
                 for name, count in after.redis.calls.items()}
        costs = cls(cpu=cpu, redis_calls={k: v for k, v in calls.items() if v},
                    redis_net_in=after.redis.net_in - before.redis.net_in,
                    redis_net_out=after.redis.net_out - before.redis.net_out)
        if before.postgres is not None and after.postgres is not None and pg_url:
            b, a = before.postgres, after.postgres
            costs.pg_commits = a.commits - b.commits
            costs.pg_rows = (a.inserted - b.inserted, a.updated - b.updated,
                             a.deleted - b.deleted)
            costs.wal = wal_bytes(pg_url, b.wal_lsn, a.wal_lsn)
        return costs

    def sum_cpu(self, prefix: str) -> float:
        return sum(seconds for name, seconds in self.cpu.items() if name.startswith(prefix))
