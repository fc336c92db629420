"""Worker start-up and shutdown hooks: the outbox relay runs beside the pool."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from contactsync.settings import get_settings
from tasks.relay import RelayThread

_relay: RelayThread | None = None


@worker_ready.connect  # type: ignore[untyped-decorator]
def start_relay(**_: Any) -> None:
    global _relay
    _relay = RelayThread(get_settings())
    _relay.start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def stop_relay(**_: Any) -> None:
    if _relay is not None:
        _relay.stop()
