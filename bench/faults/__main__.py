"""`python -m bench.faults`: every fault scenario of `bench/faults/` at a size of your choosing.

Starts a private Redis per scenario (append-only file on) and uses the machine's PostgreSQL
(a database `contactsync_faults_<pid>` of its own, dropped at the end). The PostgreSQL
scenario restarts that server: `--skip-postgres-restart` leaves it out on a machine shared
with other people's tests. Prints one Markdown table, the same as the tests check, and exits
1 if any promise broke."""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.faults.scenarios import QUICK, SCENARIOS, Size, long_form, table
from bench.faults.services import drop_database, fresh_database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--updates", type=int, default=20_000, help="updates per scenario")
    parser.add_argument("--rate", type=float, default=None, help="updates per second offered")
    parser.add_argument("--contacts", type=int, default=None)
    parser.add_argument("--only", default="", help="scenario names containing this text")
    parser.add_argument("--quick", action="store_true", help="the CI size")
    parser.add_argument("--skip-postgres-restart", action="store_true")
    parser.add_argument("--keep-logs", default=None, help="directory for the processes' logs")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else long_form(args.updates)
    if args.rate or args.contacts:
        size = Size(updates=size.updates, contacts=args.contacts or size.contacts,
                    rate=args.rate or size.rate, drain_seconds=size.drain_seconds)
    chosen = [s for s in SCENARIOS if args.only.lower() in s.name.lower()]
    if args.skip_postgres_restart:
        chosen = [s for s in chosen if not s.disturbs_others]
    print(f"contactsync faults on {platform.node()}, {size.updates} updates per scenario over "
          f"{size.contacts} contacts at {size.rate:.0f}/s offered, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    url = fresh_database()
    reports = []
    try:
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            work_dir = Path(args.keep_logs) if args.keep_logs else Path(tmp)
            for scenario in chosen:
                report = scenario.run(url, work_dir, size)
                reports.append(report)
                verdict = "; ".join(report.violations()) or "every promise kept"
                print(f"{scenario.name}: {verdict} ({'; '.join(report.notes)})", flush=True)
    finally:
        drop_database(url)
    print()
    print(table(reports))
    given = argv if argv is not None else sys.argv[1:]
    print(f"\ncommand: python -m bench.faults {' '.join(given)}")
    return 1 if any(r.violations() for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
