"""The baseline worker: a no-op Celery task on the same configuration as ours."""

from __future__ import annotations

from celery import Celery

from contactsync.settings import get_settings
from worker.app import celery_config

app = Celery("bench_noop")
app.conf.update(celery_config(get_settings()))
app.conf.task_queues = None
app.conf.task_routes = None
app.conf.task_default_queue = "bench.noop"


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(update_ids: list[str]) -> None:
    """Do nothing: what a task costs before any work."""
