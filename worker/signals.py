"""Worker start-up and shutdown hooks: logging, metrics, and the outbox relay beside the pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery.signals import setup_logging, worker_init, worker_ready, worker_shutdown

from contactsync.logs import configure
from contactsync.settings import get_settings
from tasks.relay import RelayProcess
from worker import metrics
from worker.metrics_server import MetricsServerProcess, enable_multiprocess

_relay: RelayProcess | None = None
_metrics_dir: Path | None = None
_metrics_server: MetricsServerProcess | None = None


def configure_logging(**_: Any) -> None:
    """Log as the rest of contactsync does; connected, it keeps Celery's handlers out."""
    configure(get_settings())


def prepare_metrics(**_: Any) -> None:
    """Before the pool forks: have every pool process write its samples where we serve them."""
    global _metrics_dir
    if get_settings().worker_metrics_port:
        _metrics_dir = enable_multiprocess()


def start_relay(**_: Any) -> None:
    global _relay
    _relay = RelayProcess()
    _relay.start()


def start_metrics_server(**_: Any) -> None:
    global _metrics_server
    if _metrics_dir is not None:
        _metrics_server = MetricsServerProcess(_metrics_dir)
        _metrics_server.start()


def stop_relay(**_: Any) -> None:
    if _relay is not None:
        _relay.stop()


def stop_metrics_server(**_: Any) -> None:
    if _metrics_server is not None:
        _metrics_server.stop()


setup_logging.connect(configure_logging, weak=False)
worker_init.connect(prepare_metrics, weak=False)
worker_ready.connect(start_relay, weak=False)
worker_ready.connect(start_metrics_server, weak=False)
worker_shutdown.connect(stop_relay, weak=False)
worker_shutdown.connect(stop_metrics_server, weak=False)
metrics.connect()
