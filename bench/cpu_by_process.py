"""Where a section's CPU goes: run `python -m bench ARGS` and add up, from /proc, the CPU
each kind of process it started used (the delivery worker, the update worker, the relays,
the gateway, the receiver, Redis, and PostgreSQL's backends of the run's database), from the
moment a process of kind `--after` appears (the delivery worker: section (g)) to the end;
sample PostgreSQL's active queries meanwhile.

`python -m bench.cpu_by_process [--spy SECONDS] -- --seconds 10 --only g`
`python -m bench.cpu_by_process --after gateway -- --seconds 10 --only c` (the bulk path, from
its gateway's start: after the raw SQL baseline). "gateway" is also the kind of any process
not recognised otherwise, so in other sections the count may start at the first of those.

With `--spy`, `py-spy record` (pip install py-spy; not a dependency) samples the delivery
worker (its pool processes too) and the relays for that long, from 4 s after the delivery
worker appears, into `--out` as collapsed stacks (`--format raw`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.pg_activity import ActivitySampler
from bench.services import PG_ADMIN

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """Return (parent pid, CPU seconds so far) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Census:
    """The bench's processes by kind, and the CPU each has used."""

    def __init__(self, bench_pid: int) -> None:
        self.bench_pid = bench_pid
        self.database = f"contactsync_bench_{bench_pid}"
        self.kind: dict[int, str] = {}
        self.cpu: dict[int, float] = {}
        self.parents: dict[int, int] = {}

    def sample(self) -> None:
        procs = {int(e): s for e in os.listdir("/proc") if e.isdigit()
                 if (s := _stat(int(e))) is not None}
        self.parents = {pid: s[0] for pid, s in procs.items()}
        for pid, (_, cpu) in procs.items():
            if pid not in self.kind:
                self.kind[pid] = self._kind(pid)
            if self.kind[pid]:
                self.cpu[pid] = cpu

    def alive(self, kind: str) -> list[int]:
        return [p for p, k in self.kind.items() if k == kind and p in self.parents]

    def _descends(self, pid: int) -> bool:
        while pid > 1:
            if pid == self.bench_pid:
                return True
            pid = self.parents.get(pid, 0)
        return False

    def _kind(self, pid: int) -> str:
        cmd = _cmdline(pid)
        if self.database in cmd:
            return "postgres (the run's backends)"
        if cmd.startswith("postgres:") and "contactsync_bench_" not in cmd and " test " not in cmd:
            return "postgres (its own processes, shared)"
        if pid == self.bench_pid or not self._descends(pid):
            return ""
        if "tasks.relay" in cmd:
            parent = _cmdline(self.parents.get(pid, 0))
            return "relay of the delivery worker" if "bench-webhooks" in parent else (
                "relay of the update worker")
        for needle, kind in (("bench-webhooks", "delivery worker"), ("celery", "update worker"),
                             ("receiver_app", "receiver"), ("wrk", "wrk"),
                             ("redis-server", "redis")):
            if needle in cmd:
                return kind
        return "gateway"  # the gateway's launcher and the processes it spawns


def _spy(census: Census, seconds: int, out: Path) -> list[subprocess.Popen[bytes]]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    workers = [p for p in census.alive("delivery worker")
               if census.kind.get(census.parents.get(p, 0)) != "delivery worker"]
    relays = census.alive("relay of the delivery worker") + census.alive(
        "relay of the update worker")
    spies = []
    for pid in workers + relays:
        name = "delivery-worker" if pid in workers else f"relay-{pid}"
        spies.append(subprocess.Popen(
            [py_spy, "record", "-p", str(pid), "--subprocesses", "--nonblocking", "-r", "100",
             "-d", str(seconds), "--format", "raw", "-o", str(out / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_by_process", description=__doc__)
    parser.add_argument("--spy", type=int, default=0, help="seconds of py-spy (0: none)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-py-spy"))
    parser.add_argument("--after", default="delivery worker",
                        help="the kind of process whose start starts the count")
    parser.add_argument("bench", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    bench = subprocess.Popen([sys.executable, "-m", "bench",
                              *[a for a in args.bench if a != "--"]])
    census = Census(bench.pid)
    sampler = ActivitySampler(PG_ADMIN, census.database)
    started: float | None = None
    started_wall = 0.0
    at_start: dict[int, float] = {}
    spies: list[subprocess.Popen[bytes]] = []
    while bench.poll() is None:
        census.sample()
        if started is None and census.alive(args.after):
            started, started_wall, at_start = time.monotonic(), time.time(), dict(census.cpu)
        if args.spy and started is not None and not spies and time.monotonic() - started > 4:
            args.out.mkdir(parents=True, exist_ok=True)
            spies = _spy(census, args.spy, args.out)
        time.sleep(0.25)
    sampler.stop()
    for spy in spies:
        spy.wait()
    took = time.monotonic() - (started or time.monotonic())
    totals: dict[str, float] = defaultdict(float)
    for pid, cpu in census.cpu.items():
        totals[census.kind[pid]] += cpu - at_start.get(pid, 0.0)
    print(f"\nCPU from the {args.after}'s start to the end ({took:.1f} s):")
    for kind, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        share = seconds / max(took, 1e-9) * 100
        print(f"  {kind:38s} {seconds:7.2f} s  ({share:5.1f} % of a core)")
    print("\nPostgreSQL's active queries of the run's database, samples every 20 ms:")
    queries = Counter(b.query for t, backends in sampler.samples if t >= started_wall
                      for b in backends if b.ours and b.state == "active")
    for query, count in queries.most_common(12):
        print(f"  {count:6d}  {query}")
    return bench.returncode


if __name__ == "__main__":
    raise SystemExit(main())
