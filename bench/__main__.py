"""`python -m bench`: every benchmark of the high-volume issue, each beside its baseline.

Starts a private Redis (append-only file on) and uses the machine's PostgreSQL (a database
of the run's own, `contactsync_bench_<pid>`, dropped at the end) unless `--backend sqlite`.
`--quick` is CI's smoke form: tiny sizes, no figure to trust.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench import runs, services, sync_import, webhooks
from contactsync.settings import Settings

SECTIONS = ("a", "b", "c", "d", "e", "f", "g")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, e.g. a,d")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--processes", type=int, default=2, help="gateway processes")
    parser.add_argument("--concurrency", type=int, default=2 * (os.cpu_count() or 1),
                        help="worker pool processes, ours and the no-op baseline's "
                        "(default: the worker's own, twice the CPUs)")
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--import-rows", type=int, default=100_000,
                        help="rows of section (f)'s LinkedIn export")
    parser.add_argument("--webhook-endpoints", type=int, default=2,
                        help="section (g): endpoints of the bench's account, each gets every event")
    parser.add_argument("--webhook-nice", type=int, default=0,
                        help="section (g): run the delivery worker at this nice level (an "
                        "experiment: 0, the default, is how `contactsync worker` runs it)")
    parser.add_argument("--quick", action="store_true", help="smoke form for CI")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, services.private_redis() as redis, \
            services.fresh_database(args.backend, Path(tmp)) as url:
        workdir = Path(tmp)
        settings = Settings(database_url=url, redis_url=redis)
        contacts = 50 if args.quick else args.contacts
        key, ids = services.seed(settings, contacts)
        cfg = runs.Config(settings=settings, key=key, contacts=ids, log_dir=workdir,
                          seconds=2 if args.quick else args.seconds, processes=args.processes,
                          import_rows=args.import_rows)
        if args.quick:
            cfg.drain_updates, cfg.bulk_updates, cfg.soak_updates = 500, 2000, 3000
            cfg.import_rows = 2000
        print(f"contactsync bench on {platform.node()}, {args.backend}, "
              f"{args.processes} gateway processes, {args.concurrency} worker processes, "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        if "a" in sections:
            runs.gateway_vs_bare(cfg)
        if "b" in sections:
            runs.worker_drain(cfg, args.concurrency)
        if "c" in sections:
            runs.raw_sql_vs_bulk(cfg, args.concurrency)
        if "d" in sections:
            runs.end_to_end(cfg, args.concurrency)
        if "e" in sections:
            runs.memory(cfg, args.concurrency)
        if "f" in sections:
            sync_import.upsert_vs_update(cfg, args.concurrency)
        if "g" in sections:
            webhooks.deliveries_beside_updates(cfg, args.concurrency, args.webhook_endpoints,
                                               nice=args.webhook_nice)
    print("\n| measure | ours | baseline | note |\n|---|---|---|---|")
    for row in cfg.rows:
        print("| " + " | ".join(row) + " |")
    if cfg.targets:
        print("\n| target (issue 13) | figure | baseline, same run | ratio | |")
        print("|---|---|---|---|---|")
        for target in cfg.targets:
            print("| " + " | ".join(target) + " |")
    print(f"\ncommand: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
