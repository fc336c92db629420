"""The one Celery app; its configuration is derived from the settings object."""

from __future__ import annotations

import os

from celery import Celery
from kombu.entity import Queue

from contactsync import names
from contactsync.settings import Settings, get_settings


def _queue(name: str) -> Queue:
    return Queue(name)  # type: ignore[no-untyped-call]


def sweep_interval(settings: Settings) -> int:
    """Return how often workers look for messages to bring back: a tenth of the visibility
    timeout, 1 to 10 s (each look is one ZRANGE under a lock key)."""
    return max(1, min(10, settings.visibility_timeout_seconds // 10))


def transport_options(settings: Settings) -> dict[str, object]:
    """Return kombu's Redis options: when unacknowledged messages go back to their queue."""
    return {
        "visibility_timeout": settings.visibility_timeout_seconds,
        # A message a dead worker held comes back once it is `visibility_timeout` old, at the
        # next sweep for such messages. kombu sweeps every interval x throttle seconds (10 x 10
        # by default): 100 s on top of any visibility timeout.
        "unacked_restore_interval": sweep_interval(settings),
        "unacked_restore_throttle": 1,
        # Each sweep holds a lock key, 300 s by default: a worker killed during a sweep would
        # leave it behind and stop every restore for five minutes. A sweep takes milliseconds,
        # and two at once are harmless (each restore is a transaction on the message).
        "unacked_mutex_expire": sweep_interval(settings),
        # Single updates first, bulk never starved (worker/queue_order.py). kombu's default
        # takes turns, so a flood of batches slowed every PUT; its `priority` order took a
        # bulk message only when no single one waited, so busy PUTs held batches back.
        "queue_order_strategy": "worker.queue_order:SinglesFirst",
        # A dead worker's messages come back long before that (worker/liveness.py).
        "worker_heartbeat": settings.worker_heartbeat_seconds,
        "worker_dead_after": settings.worker_dead_after_seconds,
    }


def celery_config(settings: Settings) -> dict[str, object]:
    """Return Celery's configuration for these settings."""
    return {
        "broker_url": settings.redis_url,
        "broker_transport": "worker.transport:Transport",
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(settings),
        # JSON only: a pickled message could run code in the worker.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        # A message is acknowledged only once its updates are committed, and one whose worker
        # died mid-task goes back to the queue: an accepted update is never lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 4,
        "task_default_queue": names.UPDATES_QUEUE,
        "task_queues": [_queue(names.UPDATES_QUEUE), _queue(names.BULK_QUEUE),
                        _queue(names.WEBHOOKS_QUEUE)],
        "task_routes": {names.APPLY_TASK: {"queue": names.UPDATES_QUEUE},
                        names.DELIVER_WEBHOOKS_TASK: {"queue": names.WEBHOOKS_QUEUE}},
        # Task events let Flower show every update's task as it moves.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        # A pool process spends much of each task waiting on PostgreSQL and Redis: twice the
        # CPUs keeps the CPUs busy.
        "worker_concurrency": settings.worker_concurrency or 2 * (os.cpu_count() or 1),
    }


def create_app(settings: Settings) -> Celery:
    """Build the Celery app; it connects to nothing until a worker or producer starts."""
    celery = Celery("contactsync", include=["tasks.apply", "tasks.webhooks", "worker.signals"])
    celery.conf.update(celery_config(settings))
    return celery


app = create_app(get_settings())
