"""The apply task: load the accepted updates, apply them in one transaction, answer, clean up."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from celery import Task

from contactsync import names
from contactsync.batch_apply import Outcome, apply_batch, must_apply_again, record_failures
from contactsync.dead_letters import park
from contactsync.errors import TransientFailure
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate, owners_argument
from tasks.lost_bodies import BODY_MISSING, lost_updates, owners_of, record_lost
from tasks.retry import backoff_seconds, is_transient
from tasks.runtime import Runtime, get_runtime
from tasks.validation import (
    BadMessage,
    RefusedPatch,
    checked_update_ids,
    parse_stored_update,
    storable,
)
from worker import metrics as worker_metrics
from worker.app import app

log = logging.getLogger("contactsync.worker")
# Attempts at once when the identity index refuses a write that a concurrent transaction beat:
# the next attempt reads the committed holder and ends `conflict`, so a second one is the rule.
_IDENTITY_ATTEMPTS = 3


@dataclass
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    transient: list[AcceptedUpdate] = field(default_factory=list)
    permanent: list[tuple[AcceptedUpdate, dict[str, str]]] = field(default_factory=list)


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
    exhausted = self.request.retries >= runtime.settings.max_retries
    if result.transient and exhausted:
        error = {"code": "TRANSIENT_FAILURE", "message": "Failed after every retry."}
        result.permanent += [(u, error) for u in result.transient]
        result.transient = []
    # Answer for what is committed first: parking may yet end in a retry.
    finish(runtime, result.outcomes)
    if result.permanent:
        parked = park_failures(self, runtime, result.permanent)
        finish(runtime, [Outcome(u, "failed", error=e) for u, e in parked])
    if result.transient:
        raise retry(self, runtime, [u.update_id for u in result.transient])
    counts: dict[str, int] = {}
    for outcome in result.outcomes:
        key = "duplicate" if outcome.duplicate else outcome.status
        counts[key] = counts.get(key, 0) + 1
    if result.permanent or lost:
        counts["failed"] = counts.get("failed", 0) + len(result.permanent) + len(lost)
    return counts


def load_updates(
    runtime: Runtime, update_ids: Sequence[str]
) -> tuple[list[AcceptedUpdate], list[tuple[AcceptedUpdate, dict[str, str]]], list[str]]:
    """Read the bodies the gateway stored; return those to apply, those to park at once, and
    the ids with no body.

    A missing body was finished by an earlier delivery, or lost (tasks/lost_bodies.py). A body
    whose patch or contact id this worker refuses is parked as `failed` with the reason; one
    that does not even say which update it is can only be logged.
    """
    # An id listed twice is one update: applied one by one, it would fail (or be parked) twice.
    update_ids = list(dict.fromkeys(update_ids))
    raws = runtime.redis.mget([names.update_body_key(i) for i in update_ids])
    missing = [i for i, raw in zip(update_ids, raws, strict=True) if raw is None]
    if missing:
        log.info("skipping updates with no stored body: %s", ", ".join(missing))
    updates = []
    refused: list[tuple[AcceptedUpdate, dict[str, str]]] = []
    unreadable = []
    for update_id, raw in zip(update_ids, raws, strict=True):
        if raw is None:
            continue
        try:
            updates.append(parse_stored_update(raw))  # bad bodies: tasks/validation.py
        except RefusedPatch as exc:
            log.error("refusing update %s: %s", update_id, exc)
            refused.append((exc.update, {"code": "UNREADABLE_UPDATE", "message": str(exc)}))
        except (ValueError, TypeError) as exc:
            # One unreadable body (say, from a newer gateway) must not hold back the others;
            # it stays in Redis for an operator to look at.
            reason = str(exc) if isinstance(exc, BadMessage) else type(exc).__name__
            log.error("skipping update %s: unreadable body (%s)", update_id, reason)
            unreadable.append(update_id)
    if unreadable:  # no longer pending: queueing it again would only log this again
        runtime.redis.zrem(names.PENDING_KEY, *unreadable)
    return updates, refused, missing


def apply_with_fallback(runtime: Runtime, updates: list[AcceptedUpdate]) -> BatchResult:
    """Apply all in one transaction; if that fails for good, apply one by one."""
    result = BatchResult()
    if not updates:
        return result
    # Outcomes count only once the block has committed: a commit can fail too (the connection
    # dropped), and an update both "applied" and retried would have its body deleted first.
    try:
        result.outcomes = _apply_committed(runtime, updates)
        return result
    except Exception as exc:
        if is_transient(exc):
            result.transient = list(updates)
            return result
        if len(updates) == 1:
            log.warning("update %s failed: %s", updates[0].update_id, _describe(exc))
            result.permanent = [(updates[0], _error_of(exc))]
            return result
        log.warning("batch failed, applying one by one: %s", _describe(exc))
    for update in updates:
        try:
            result.outcomes += _apply_committed(runtime, [update])
        except Exception as exc:
            if is_transient(exc):
                result.transient.append(update)
            else:
                log.warning("update %s failed: %s", update.update_id, _describe(exc))
                result.permanent.append((update, _error_of(exc)))
    return result


def _apply_committed(runtime: Runtime, updates: list[AcceptedUpdate]) -> list[Outcome]:
    """Apply in one transaction; when the identity index was the one to refuse, try again
    at once: the look-up then sees the holder, and the update ends `conflict` (an upsert
    racing to create: `applied` to the winner's contact) without a wait."""
    for attempt in range(1, _IDENTITY_ATTEMPTS + 1):
        try:
            with runtime.db.unit_of_work() as session:
                return apply_batch(session, updates, utcnow())
        except Exception as exc:
            # Still refused after these: retried later like any transient failure (23505).
            if attempt == _IDENTITY_ATTEMPTS or not must_apply_again(exc):
                raise
            log.info("identity taken by a concurrent write; applying again")
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    """Name a failure for the log without its text: SQL errors quote the statement's values."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return type(exc).__name__
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    return f"{type(exc).__name__} ({type(orig).__name__}, {sqlstate})"


def _error_of(exc: BaseException) -> dict[str, str]:
    # The exception text may quote personal data from the statement: name the type only.
    name = type(exc).__name__
    return {"code": "APPLY_FAILED", "message": f"The update could not be applied ({name})."}


def park_failures(
    task: Task, runtime: Runtime, failures: list[tuple[AcceptedUpdate, dict[str, str]]]
) -> list[tuple[AcceptedUpdate, dict[str, str]]]:
    """Record `failed` and park as dead letters; return those parked.

    While the database is down, keep retrying. A failure whose own values the database refuses
    (a contact id too long for its column, a sequence past BIGINT) must not take the others, or
    the task, down with it, nor come back forever: it is parked alone, its columns made to fit.
    """
    try:
        _park(runtime, failures)
        return failures
    except Exception as exc:
        if is_transient(exc):
            raise retry(task, runtime, [u.update_id for u, _ in failures]) from exc
        if len(failures) == 1:
            return _park_storable(task, runtime, failures[0], exc)
    parked, again = [], []
    for failure in failures:
        try:
            _park(runtime, [failure])
            parked.append(failure)
        except Exception as exc:
            if is_transient(exc):
                again.append(failure[0].update_id)
            else:
                parked += _park_storable(task, runtime, failure, exc, again)
    if again:
        finish(runtime, [Outcome(u, "failed", error=e) for u, e in parked])
        raise retry(task, runtime, again)
    return parked


def _park(
    runtime: Runtime, failures: list[tuple[AcceptedUpdate, dict[str, str]]],
    bodies: dict[str, dict[str, Any]] | None = None,
) -> None:
    with runtime.db.unit_of_work() as session:
        now = utcnow()
        record_failures(session, failures, now)
        park(session, failures, now, bodies)


def _park_storable(
    task: Task, runtime: Runtime, failure: tuple[AcceptedUpdate, dict[str, str]],
    refused: BaseException, again: list[str] | None = None,
) -> list[tuple[AcceptedUpdate, dict[str, str]]]:
    """Park one failure whose values the database refused, as `storable` makes them; the dead
    letter keeps the body as it came. Return it as parked, or nothing when even that fails."""
    update, error = failure
    log.warning("update %s failed and could not be recorded as it is (%s); recording it with "
                "its columns made to fit", update.update_id, _describe(refused))
    fitted = storable(update)
    try:
        _park(runtime, [(fitted, error)], {update.update_id: asdict(update)})
        return [(update, error)]
    except Exception as exc:
        if not is_transient(exc):
            # Not expected once the columns fit. Never queued again: out of the pending set,
            # its body left in Redis for an operator.
            log.error("update %s failed and could not be recorded (%s); its body stays in "
                      "Redis", update.update_id, _describe(exc))
            runtime.redis.zrem(names.PENDING_KEY, update.update_id)
            return []
        if again is None:
            raise retry(task, runtime, [update.update_id]) from exc
        again.append(update.update_id)
        return []


def finish(runtime: Runtime, outcomes: list[Outcome]) -> None:
    """After commit: answer waiting gateways, then drop the bodies of finished updates."""
    replies: dict[str, list[dict[str, Any]]] = {}
    for outcome in outcomes:
        if outcome.update.reply_to:
            replies.setdefault(outcome.update.reply_to, []).append(reply_of(outcome))
    finished = [o.update.update_id for o in outcomes]
    try:
        with runtime.redis.pipeline(transaction=False) as pipe:
            for channel, items in replies.items():
                pipe.publish(channel, orjson.dumps(items))
            if finished:
                pipe.delete(*[names.update_body_key(i) for i in finished])
                pipe.zrem(names.PENDING_KEY, *finished)
            for account_id, ids in _by_account(outcomes).items():
                pipe.zrem(names.account_pending_key(account_id), *ids)
            pipe.execute()
    except Exception:
        # The updates are committed; a waiting gateway falls back to 202 and a leftover body
        # is skipped on redelivery, so losing this step loses nothing.
        log.warning("could not publish replies or drop bodies", exc_info=True)
    observe(outcomes)


def _by_account(outcomes: list[Outcome]) -> dict[str, list[str]]:
    by_account: dict[str, list[str]] = {}
    for outcome in outcomes:
        by_account.setdefault(outcome.update.account_id, []).append(outcome.update.update_id)
    return by_account


def observe(outcomes: list[Outcome]) -> None:
    """Count each finished update and log one line for it (ids, status, durations)."""
    worker_metrics.record_finished(outcomes)


def reply_of(outcome: Outcome) -> dict[str, Any]:
    """Return what a waiting gateway needs to answer the client."""
    update = outcome.update
    return {
        "update_id": update.update_id,
        "contact_id": update.contact_id,
        "status": outcome.status,
        "received_at": update.received_at,
        "applied_at": isoformat(utcnow()),
        "changed_fields": outcome.changed_fields,
        "error": outcome.error,
        "contact": outcome.contact,
    }


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
