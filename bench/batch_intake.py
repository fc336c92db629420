"""The batch endpoint alone: how fast one gateway process takes 1,000-item batches, and its CPU
per item, with no worker running (section (c)'s intake without the apply beside it).

`python -m bench.batch_intake [--batches 30]` makes a fresh database with 1,000 contacts and a
private Redis, starts one gateway process, and posts `--batches` batch updates of 1,000 items
one after another, as `contactsync import` and section (c) do. CPU is the gateway process's,
from /proc.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx

from bench import services
from contactsync.settings import Settings

BATCH = 1000


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, services.private_redis() as redis, \
            services.fresh_database("postgresql", Path(tmp)) as url:
        settings = Settings(database_url=url, redis_url=redis)
        key, ids = services.seed(settings, BATCH)
        port = services.free_port()
        gateway = services.start_gateway(services.env_for(settings), port, 1, Path(tmp))
        (pid,) = gateway.pids()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                              headers={"X-API-Key": key}) as client:
                def post(round_: int) -> None:
                    body = {"updates": [{"id": contact_id, "company": f"C{round_}-{i}"}
                                        for i, contact_id in enumerate(ids)]}
                    client.post("/external/v1/contacts/batch/update", json=body
                                ).raise_for_status()

                post(-1)  # the first request warms the process
                cpu, started = _cpu_seconds(pid), time.perf_counter()
                for round_ in range(args.batches):
                    post(round_)
                cpu, took = _cpu_seconds(pid) - cpu, time.perf_counter() - started
        finally:
            gateway.stop()
    items = args.batches * BATCH
    print(f"{items:,} items in {args.batches} batches: {items / took:,.0f} items/s, "
          f"{took / args.batches * 1000:.1f} ms a batch, gateway CPU {cpu / items * 1e6:.1f} µs "
          "an item")


if __name__ == "__main__":
    main()
