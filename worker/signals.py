"""Worker start-up and shutdown hooks: the outbox relay runs beside the pool."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from tasks.relay import RelayProcess

_relay: RelayProcess | None = None


def start_relay(**_: Any) -> None:
    global _relay
    _relay = RelayProcess()
    _relay.start()


def stop_relay(**_: Any) -> None:
    if _relay is not None:
        _relay.stop()


worker_ready.connect(start_relay, weak=False)
worker_shutdown.connect(stop_relay, weak=False)
