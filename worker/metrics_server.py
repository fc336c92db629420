"""Serve a worker's metrics on a port of its own, summed over every pool process.

Celery's prefork pool runs tasks in child processes, each with metrics of its own. The worker's
main process switches prometheus-client to multiprocess mode before the pool forks: each child
then writes its samples to a file in a directory made for this worker, and a small server
process started beside the pool sums those files at every scrape (the same as serving from the
main process, without a thread there: the pool forks its children from it). The server also
reports the outbox backlog and the webhook backlog, read from the database at scrape time.
The directory goes away when the worker stops.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from contactsync import supervise
from contactsync.db import Database
from contactsync.metrics_dir import make_metrics_dir
from contactsync.models import OutboxEvent, WebhookDelivery, WebhookEndpoint
from contactsync.settings import Settings, get_settings
from contactsync.timeutil import as_utc, utcnow

log = logging.getLogger("contactsync.worker.metrics")

def enable_multiprocess() -> Path:
    """Make this worker's sample directory and have every metric made from now on use it.

    Call in the main process before the pool forks; the children inherit both.
    """
    directory = make_metrics_dir("worker")
    # prometheus-client chose its value class when first imported: switch it now.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return directory


class OutboxCollector:
    """Report how many committed change events wait for the relay to publish them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._db: Database | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # no database read when the collector is registered

    def collect(self) -> Iterable[Metric]:
        if self._db is None:
            self._db = Database(self._settings)
        try:
            with self._db.reading() as session:
                count = session.scalar(select(func.count()).select_from(OutboxEvent)) or 0
        except Exception as exc:
            # A scrape while the database is down shows the series missing, not a wrong 0.
            log.warning("outbox backlog not read (%s)", type(exc).__name__)
            return []
        return [GaugeMetricFamily(
            "contactsync_worker_outbox_backlog",
            "Change events committed and not yet published to the event stream",
            value=count,
        )]


class WebhookCollector:
    """Report, per endpoint, the age of its oldest event not yet delivered, and how many
    endpoints are disabled; read from the database at scrape time, as the outbox backlog is."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._db: Database | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        if self._db is None:
            self._db = Database(self._settings)
        now = utcnow()
        try:
            with self._db.reading() as session:
                oldest = session.execute(
                    select(WebhookDelivery.endpoint_id, func.min(WebhookDelivery.created_at))
                    .where(WebhookDelivery.status == "pending")
                    .group_by(WebhookDelivery.endpoint_id)
                ).all()
                disabled = session.scalar(
                    select(func.count()).select_from(WebhookEndpoint)
                    .where(WebhookEndpoint.enabled.is_(False))
                ) or 0
        except Exception as exc:
            log.warning("webhook backlog not read (%s)", type(exc).__name__)
            return []
        age = GaugeMetricFamily(
            "contactsync_webhook_oldest_undelivered_seconds",
            "Per endpoint, the age of its oldest event not yet delivered (nor finally failed)",
            labels=["endpoint_id"],
        )
        for endpoint_id, created_at in oldest:
            age.add_metric([endpoint_id], max(0.0, (now - as_utc(created_at)).total_seconds()))
        return [age, GaugeMetricFamily(
            "contactsync_webhook_endpoints_disabled",
            "Webhook endpoints disabled (by their owner, or after failing for days)",
            value=disabled,
        )]


class MetricsServerProcess:
    """Run the metrics server in a process of its own beside a worker's pool."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # The same interpreter and environment, hence the same settings as the worker.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "worker.metrics_server", str(os.getpid()), str(self.directory)],
            stdin=subprocess.DEVNULL,
        )

    def stop(self, timeout: float = 5) -> None:
        """Stop the server, then drop the sample directory."""
        if self._process is not None:
            supervise.stop([self._process], timeout)
        shutil.rmtree(self.directory, ignore_errors=True)


def serve(settings: Settings, directory: Path, parent_pid: int, stop: threading.Event) -> int:
    """Serve until `stop` is set or the worker is gone; return the exit status."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(OutboxCollector(settings))
    registry.register(WebhookCollector(settings))
    port, address = settings.worker_metrics_port, settings.worker_metrics_address
    try:
        server, _ = start_http_server(port, address, registry)
    except OSError as exc:
        # Another worker on this host serves this port: this worker runs on, unobserved.
        log.warning("worker metrics not served on %s:%s (%s)", address, port, exc.strerror)
        return 0
    log.info("worker metrics on http://%s:%s/metrics", address, port)
    orphaned = threading.Event()

    def worker_gone() -> None:
        orphaned.set()
        stop.set()

    supervise.exit_with_parent(parent_pid, worker_gone)
    while not stop.wait(1):  # a signal handler runs between waits
        pass
    if orphaned.is_set():  # the worker died without stopping us: nobody else will clean up
        shutil.rmtree(directory, ignore_errors=True)
    server.shutdown()
    server.server_close()
    return 0


def _main(argv: list[str]) -> int:
    from contactsync.logs import configure

    settings = get_settings()
    configure(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C reaches the whole process group: the worker stops this server when it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return serve(settings, Path(argv[1]), int(argv[0]), stop)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
