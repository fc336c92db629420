"""(f) `contactsync import` end to end: a LinkedIn export upserted, then the same rows updated.

The upsert imports a `Connections.csv` of new people (each a create); the update imports a
file of ours naming the contacts that made, with the same columns and new values. Both run
as a user runs them (the command, its default batch size) against one gateway and worker.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from redis import Redis

from bench import services
from bench.processes import ROOT, free_port
from bench.runs import Config, _applied, _wait_applied
from bench.services import wait_for
from contactsync import names
from contactsync.db import Database
from contactsync.models import Contact

PREAMBLE = (
    "Notes:\n"
    '"When exporting your connection data, you may notice that some of the email addresses '
    'are missing."\n\n'
)
LINKEDIN_HEADER = ["First Name", "Last Name", "URL", "Email Address", "Company", "Position",
                   "Connected On"]
URL = "https://www.linkedin.com/in/bench-person-{}"
_INDEX = re.compile(r"bench-person-(\d+)")


def _email(i: int) -> str:
    return f"person{i}@example.com" if i % 3 == 0 else ""  # most connections show none


def write_connections(path: Path, rows: int) -> None:
    with path.open("w", newline="") as handle:
        handle.write(PREAMBLE)
        writer = csv.writer(handle)
        writer.writerow(LINKEDIN_HEADER)
        for i in range(rows):
            writer.writerow([f"First{i}", f"Last{i}", URL.format(i), _email(i),
                             f"Company {i % 500}", f"Position {i % 50}", "15 Jan 2024"])


def write_updates(cfg: Config, path: Path) -> int:
    """Write a file of ours updating each contact the LinkedIn import made; return its rows."""
    db = Database(cfg.settings)
    try:
        with db.reading() as session:
            made = session.query(Contact.id, Contact.linkedin_url).filter(
                Contact.source == "linkedin").all()
    finally:
        db.dispose()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "linkedin_url", "email", "company", "position"])
        for contact_id, url in made:
            i = int(_INDEX.search(url or "").group(1))  # type: ignore[union-attr]
            writer.writerow([contact_id, f"First{i} Last{i}", URL.format(i), _email(i),
                             f"Company B{i % 500}", f"Position B{i % 50}"])
    return len(made)


@dataclass
class Run:
    rate: float
    seconds: float
    gateway: list[float]  # RSS samples, MiB, from the start of the import
    worker: list[float]
    at_tenth: int  # index of the first sample taken with 10 % of the rows applied
    sent: str  # the command's own time, every row accepted (from its summary)


def import_file(cfg: Config, path: Path, rows: int, url: str, gateway: services.Service,
                worker: services.Service) -> Run:
    """Run `contactsync import` on `path`; time it until its last row is applied."""
    env = services.env_for(cfg.settings, CONTACTSYNC_API_URL=url, CONTACTSYNC_API_KEY=cfg.key)
    before = _applied(cfg.settings)
    gateway_rss, worker_rss = [gateway.rss_mib()], [worker.rss_mib()]
    at_tenth = 0
    log_path = cfg.log_dir / f"import-{path.stem}.log"
    log = log_path.open("wb")
    started = time.monotonic()
    command = subprocess.Popen([sys.executable, "-m", "cli", "import", str(path)], env=env,
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = started + 1800
    while (done := _applied(cfg.settings) - before) < rows:
        if command.poll() not in (None, 0) or time.monotonic() > deadline:
            command.kill()
            raise SystemExit(f"bench: import of {path.name} stopped with {done} of {rows} "
                             f"rows applied: {log_path.read_text()[-500:]}")
        gateway_rss.append(gateway.rss_mib())
        worker_rss.append(worker.rss_mib())
        if not at_tenth and done >= rows // 10:
            at_tenth = len(worker_rss) - 1
        time.sleep(0.25)
    finished = time.monotonic()
    status = command.wait(60)
    log.close()
    if status != 0:
        raise SystemExit(f"bench: import of {path.name} exited {status}")
    sent = re.search(r"rows in ([0-9.]+) s", log_path.read_text())
    gateway_rss.append(gateway.rss_mib())
    worker_rss.append(worker.rss_mib())
    return Run(rows / (finished - started), finished - started, gateway_rss, worker_rss,
               at_tenth or len(worker_rss) - 1, sent.group(1) if sent else "?")


def _warm_up(cfg: Config, url: str) -> None:
    """Have the worker apply a batch first, so neither import's time holds its start.

    First it applies what earlier sections left queued (section (e) stops its load without
    waiting), which would otherwise count as the imports' rows.
    """
    redis = Redis.from_url(cfg.settings.redis_url)
    wait_for(lambda: redis.llen(names.UPDATES_QUEUE) + redis.llen(names.BULK_QUEUE)
             + redis.hlen("unacked") == 0, "the drain of earlier sections' updates", 600)
    before = _applied(cfg.settings)
    items = [{"id": contact_id, "company": "Warm"} for contact_id in cfg.contacts[:100]]
    httpx.post(f"{url}/external/v1/contacts/batch/update", json={"updates": items},
               headers={"X-API-Key": cfg.key}, timeout=60).raise_for_status()
    _wait_applied(cfg.settings, before + len(items))


def upsert_vs_update(cfg: Config, concurrency: int) -> None:
    """(f) Rows applied per second through `contactsync import`: batch upsert, batch update."""
    print("(f) sync import: batch upsert vs batch update", flush=True)
    connections = cfg.log_dir / "Connections.csv"
    write_connections(connections, cfg.import_rows)
    port = free_port()
    gateway = services.start_gateway(cfg.env(), port, cfg.processes, cfg.log_dir)
    worker = services.start_worker(cfg.env(), concurrency, cfg.log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        _warm_up(cfg, url)
        upsert = import_file(cfg, connections, cfg.import_rows, url, gateway, worker)
        updates = cfg.log_dir / "people.csv"
        made = write_updates(cfg, updates)
        if made != cfg.import_rows:
            raise SystemExit(f"bench: the LinkedIn import made {made} of {cfg.import_rows} "
                             "contacts")
        update = import_file(cfg, updates, made, url, gateway, worker)
    finally:
        worker.stop()
        gateway.stop()
    cfg.row("sync import, batch upsert vs update", f"{upsert.rate:.0f} rows/s",
            f"{update.rate:.0f} rows/s", f"ratio {upsert.rate / update.rate:.2f} (target 0.7); "
            f"{made} rows in {upsert.seconds:.1f}s and {update.seconds:.1f}s, "
            f"the command's own {upsert.sent}s and {update.sent}s")
    for name, run in (("upsert", upsert), ("update", update)):
        for what, samples in (("gateway", run.gateway), ("worker", run.worker)):
            tenth, last = samples[run.at_tenth], samples[-1]
            cfg.row(f"{what} RSS over the {name} import", f"peak {max(samples):.0f} MiB",
                    f"start {samples[0]:.0f} MiB, at 10%: {tenth:.0f} MiB",
                    f"end {last:.0f} MiB ({(last - tenth) / tenth * 100:+.0f}% from 10%)")
