"""`python -m bench.variants`: section (a) for gateway variants, with where the CPU went.

Each argument names a server and, optionally, settings for it: `bare`, `ours`,
`ours:CONTACTSYNC_PUBLISH_LINGER_MS=0,CONTACTSYNC_PUBLISH_MAX_BATCH=50`; `plain` is ours with
its PUT routed by FastAPI instead of `api_gateway/edge.py`. For each, in the
order given, it starts the server (2 processes unless `--processes`), warms it up, drives it
with wrk as section (a) does, and prints req/s, p50 and p99, the CPU each server process used
during the run, and how many of wrk's connections each process held. Alternate variants
(`bare ours bare ours`) to see the machine's drift.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench import load, services
from contactsync.settings import Settings


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connections_by_pid(port: int) -> dict[int, int]:
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    counts: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


def _drive(results: list[load.WrkResult], url: str, key: str, contacts: int,
           seconds: float) -> None:
    results.append(load.wrk(url, key, contacts, seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.variants", description=__doc__)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, services.private_redis() as redis, \
            services.fresh_database("postgresql", Path(tmp)) as url:
        workdir = Path(tmp)
        settings = Settings(database_url=url, redis_url=redis)
        key, ids = services.seed(settings, 1000)
        for variant in args.variants:
            name, _, extra = variant.partition(":")
            env = services.env_for(settings, **dict(e.split("=", 1) for e in extra.split(",") if e))
            port = services.free_port()
            start = {"bare": services.start_bare,
                     "plain": services.start_plain}.get(name, services.start_gateway)
            server = start(env, port, args.processes, workdir)
            url = f"http://127.0.0.1:{port}"
            try:
                load.wrk(url, key, len(ids), 2)  # warm up
                pids = [pid for pid in server.pids()[1:]  # the serving processes
                        if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()]
                before = {pid: _cpu_seconds(pid) for pid in pids}
                results: list[load.WrkResult] = []
                run = threading.Thread(target=_drive, args=(results, url, key, len(ids),
                                                            args.seconds))
                run.start()
                time.sleep(min(3.0, args.seconds / 2))
                held = _connections_by_pid(port)
                run.join()
                cpu = {pid: (_cpu_seconds(pid) - before[pid]) / args.seconds * 100 for pid in pids}
            finally:
                server.stop()
            result = results[0]
            shares = ", ".join(f"{cpu[pid]:.0f}% CPU / {held.get(pid, 0)} conns" for pid in pids)
            print(f"{variant}: {result.rps:.0f} req/s, p50 {result.p50_ms:.1f} ms, "
                  f"p99 {result.p99_ms:.1f} ms, non-2xx {result.non_2xx}; per process: {shares}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
