"""The apply task: parse the message, load and apply its updates, park failures, answer, and
decide the retry. The logic lives in the modules it calls."""

from __future__ import annotations

from celery import Task

from contactsync import names
from contactsync.batch_apply import Outcome
from contactsync.errors import TransientFailure
from contactsync.updates import owners_argument
from tasks.applying import apply_with_fallback
from tasks.finish import finish
from tasks.loading import load_updates
from tasks.lost_bodies import BODY_MISSING, lost_updates, owners_of, record_lost
from tasks.parking import park_failures
from tasks.retry import backoff_seconds, is_transient
from tasks.runtime import Runtime, get_runtime
from tasks.validation import checked_update_ids
from worker.app import app

_OUT_OF_RETRIES = {"code": "TRANSIENT_FAILURE", "message": "Failed after every retry."}


@app.task(  # type: ignore[untyped-decorator]
    name=names.APPLY_TASK, bind=True, acks_late=True, reject_on_worker_lost=True
)
def apply_updates(
    self: Task, update_ids: list[str], owners: object = None
) -> dict[str, int]:
    """Apply accepted updates by id; return counts by status (no personal data).

    `owners` names each update's account and contact id, for one whose body was lost.
    """
    owned = owners_of(update_ids, owners)
    # Bad messages (tasks/validation.py): a malformed argument is refused once, not retried.
    update_ids = checked_update_ids(update_ids)
    if not update_ids:
        return {}
    runtime = get_runtime()
    try:
        updates, refused, missing = load_updates(runtime, update_ids)
        queue = (self.request.delivery_info or {}).get("routing_key") or names.UPDATES_QUEUE
        lost = lost_updates(runtime, missing, owned, queue)
        if lost:
            record_lost(runtime, lost)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise retry(self, runtime, update_ids) from exc
    if lost:
        finish(runtime, [Outcome(u, "failed", error=dict(BODY_MISSING)) for u in lost])
    result = apply_with_fallback(runtime, updates)
    result.permanent += refused
    if result.transient and self.request.retries >= runtime.settings.max_retries:
        result.permanent += [(u, _OUT_OF_RETRIES) for u in result.transient]
        result.transient = []
    # Answer for what is committed first: parking may yet end in a retry.
    finish(runtime, result.outcomes)
    again: list[str] = []
    if result.permanent:
        parked, again = park_failures(runtime, result.permanent)
        finish(runtime, [Outcome(u, "failed", error=e) for u, e in parked])
    # One retry for both: updates that failed transiently must not wait for the orphan sweep
    # because parking the others failed too.
    again += [u.update_id for u in result.transient]
    if again:
        raise retry(self, runtime, again)
    counts: dict[str, int] = {}
    for outcome in result.outcomes:
        key = "duplicate" if outcome.duplicate else outcome.status
        counts[key] = counts.get(key, 0) + 1
    if result.permanent or lost:
        counts["failed"] = counts.get("failed", 0) + len(result.permanent) + len(lost)
    return counts


def retry(task: Task, runtime: Runtime, update_ids: list[str]) -> Exception:
    """Return Celery's retry for these updates after an exponential, jittered wait.

    The retry budget is counted here (`max_retries` in settings), not by Celery: updates that
    exhaust it are parked, and the ones that cannot be parked yet keep waiting.
    """
    countdown = backoff_seconds(task.request.retries, runtime.settings.retry_backoff_max_seconds)
    # The owners follow their updates: the retry may name fewer of them.
    first = task.request.args[0] if task.request.args else None
    owned = owners_of(first, (task.request.kwargs or {}).get("owners"))
    owners = owners_argument([owned.get(i) for i in update_ids])
    retry_exc: Exception = task.retry(
        args=[update_ids], kwargs={"owners": owners}, countdown=countdown, max_retries=None,
        exc=TransientFailure("transient failure"),
    )
    return retry_exc
