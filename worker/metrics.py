"""The workers' Prometheus metrics and their one log line per finished update.

Pool processes record here; `worker.metrics_server` sums every process's samples and serves
them on the worker's metrics port. The metrics are made on first use, in the pool process, so
that they are made after the main process switched prometheus-client to multiprocess mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from celery.signals import task_failure, task_postrun, task_prerun, task_retry
from prometheus_client import Counter, Histogram

from contactsync import names
from contactsync.batch_apply import Outcome
from contactsync.timeutil import as_utc, parse_iso, utcnow
from contactsync.webhook_outcomes import Recorded

log = logging.getLogger("contactsync.worker")

_QUEUES = (names.UPDATES_QUEUE, names.BULK_QUEUE)
# Seconds: a healthy lag is tens of milliseconds; a backlog drains over minutes.
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class WorkerMetrics:
    updates: Counter
    retried: Counter
    task_failures: Counter
    apply_seconds: Histogram
    lag_seconds: Histogram


@dataclass(frozen=True)
class WebhookMetrics:
    deliveries: Counter
    attempt_seconds: Histogram
    latency_seconds: Histogram
    disabled: Counter


# Seconds: a receiver answers in milliseconds; the timeout is 10 s.
_ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@lru_cache(maxsize=1)
def webhook_metrics() -> WebhookMetrics:
    """Return this process's webhook delivery metrics, made on first use."""
    return WebhookMetrics(
        deliveries=Counter(
            "contactsync_webhook_deliveries_total",
            "Webhook delivery attempts by outcome: succeeded, retried (to be tried again), "
            "failed (out of retries, replayable)", ["outcome"],
        ),
        attempt_seconds=Histogram(
            "contactsync_webhook_attempt_seconds",
            "Time a receiver took to answer one delivery attempt (or to fail it)",
            buckets=_ATTEMPT_BUCKETS,
        ),
        latency_seconds=Histogram(
            "contactsync_webhook_delivery_latency_seconds",
            "Time from a change to its event's successful delivery, retries included",
            buckets=_LAG_BUCKETS,
        ),
        disabled=Counter(
            "contactsync_webhook_endpoints_disabled_total",
            "Endpoints disabled after failing for webhook_disable_after_seconds",
        ),
    )


def record_deliveries(
    recorded: Recorded, occurred: dict[int, datetime], now: datetime
) -> None:
    """Count a delivery task's attempts by outcome, with their durations and latencies."""
    try:
        metrics = webhook_metrics()
        for outcome, results in (("succeeded", recorded.succeeded),
                                 ("retried", recorded.retried), ("failed", recorded.failed)):
            if results:
                metrics.deliveries.labels(outcome).inc(len(results))
            for result in results:
                metrics.attempt_seconds.observe(result.duration_ms / 1000)
        for result in recorded.succeeded:
            changed = occurred.get(result.delivery_id)
            if changed is not None:
                metrics.latency_seconds.observe(
                    max(0.0, (now - as_utc(changed)).total_seconds())
                )
        if recorded.disabled_reason is not None:
            metrics.disabled.inc()
    except Exception:  # observing must never fail a task whose attempts are recorded
        log.warning("could not record webhook metrics", exc_info=True)


@lru_cache(maxsize=1)
def worker_metrics() -> WorkerMetrics:
    """Return this process's metrics, made on first use."""
    return WorkerMetrics(
        updates=Counter(
            "contactsync_worker_updates_total",
            "Updates finished, by status (applied, noop, created, conflict, not_found, failed; "
            "duplicate: a redelivery of one already finished)", ["status", "queue"],
        ),
        retried=Counter(
            "contactsync_worker_updates_retried_total",
            "Updates sent back to their queue after a transient failure", ["queue"],
        ),
        task_failures=Counter(
            "contactsync_worker_task_failures_total",
            "Apply tasks that ended in an unexpected error", ["queue"],
        ),
        apply_seconds=Histogram(
            "contactsync_worker_apply_seconds",
            "Time to run one apply task (a message of 1 or more updates)", ["queue"],
            buckets=_APPLY_BUCKETS,
        ),
        lag_seconds=Histogram(
            "contactsync_worker_lag_seconds",
            "Time from the gateway accepting an update to a worker finishing it", ["queue"],
            buckets=_LAG_BUCKETS,
        ),
    )


class _Current(threading.local):
    """The task this thread runs: when it started and from which queue."""

    started: float | None = None
    queue: str = "other"


_current = _Current()


def _queue_label(queue: str | None) -> str:
    # A label per known queue only: anything else would be unbounded.
    return queue if queue in _QUEUES else "other"


def _queue_of(request: Any) -> str:
    delivery = getattr(request, "delivery_info", None) or {}
    return _queue_label(delivery.get("routing_key"))


def record_finished(outcomes: Sequence[Outcome]) -> None:
    """Count each finished update and log one line for it: ids, status, durations, no values."""
    try:
        _record(outcomes)
    except Exception:  # observing must never turn a committed update into a failed task
        log.warning("could not record metrics for finished updates", exc_info=True)


def _record(outcomes: Sequence[Outcome]) -> None:
    if not outcomes:
        return
    metrics = worker_metrics()
    now = utcnow()
    started = _current.started
    apply_ms = round((time.perf_counter() - started) * 1000, 2) if started is not None else None
    logging_on = log.isEnabledFor(logging.INFO)
    # One increment per status, not per update: each is a write to a shared file (multiprocess
    # mode), a bulk message's 200 of them a measurable part of its time.
    counts: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        update = outcome.update
        queue = _queue_label(update.queue)
        status = "duplicate" if outcome.duplicate else outcome.status
        counts[status, queue] = counts.get((status, queue), 0) + 1
        lag = max(0.0, (now - parse_iso(update.received_at)).total_seconds())
        if not outcome.duplicate:
            metrics.lag_seconds.labels(queue).observe(lag)
        if logging_on:
            log.info("update finished", extra={
                "update_id": update.update_id, "contact_id": update.contact_id,
                "account_id": update.account_id, "status": status, "queue": queue,
                "changed_fields": outcome.changed_fields, "apply_ms": apply_ms,
                "lag_ms": round(lag * 1000, 1),
            })
    for (status, queue), count in counts.items():
        metrics.updates.labels(status, queue).inc(count)


def _on_prerun(task: Any = None, **_: Any) -> None:
    _current.started = time.perf_counter()
    _current.queue = _queue_of(getattr(task, "request", None))


def _on_postrun(**_: Any) -> None:
    started, _current.started = _current.started, None
    if started is not None:
        worker_metrics().apply_seconds.labels(_current.queue).observe(
            time.perf_counter() - started
        )


def _on_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    # The retry's own signature lists the updates sent back (a subset of the message's).
    sig = getattr(reason, "sig", None)
    args = getattr(sig, "args", None) or getattr(request, "args", None) or [[]]
    count = len(args[0]) if args and isinstance(args[0], list) else 1
    worker_metrics().retried.labels(_queue_of(request)).inc(count)


def _on_failure(sender: Any = None, **_: Any) -> None:
    worker_metrics().task_failures.labels(_queue_of(getattr(sender, "request", None))).inc()


def connect(task_name: str = names.APPLY_TASK) -> None:
    """Observe the apply task through Celery's task signals."""
    for signal, handler in (
        (task_prerun, _on_prerun), (task_postrun, _on_postrun),
        (task_retry, _on_retry), (task_failure, _on_failure),
    ):
        signal.connect(_only(task_name, handler), weak=False)


def _only(task_name: str, handler: Callable[..., None]) -> Callable[..., None]:
    def receiver(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "name", None) == task_name:
            handler(sender=sender, **kwargs)

    return receiver
