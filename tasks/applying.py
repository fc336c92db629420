"""Apply accepted updates: all in one transaction, or, if that fails for good, one by one."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from contactsync.batch_apply import Outcome, apply_batch, must_apply_again
from contactsync.timeutil import utcnow
from contactsync.updates import AcceptedUpdate
from tasks.parking import Failure, describe, park_refused
from tasks.retry import is_transient
from tasks.runtime import Runtime

log = logging.getLogger("contactsync.worker")
# Attempts at once when the identity index refuses a write that a concurrent transaction beat:
# the next attempt reads the committed holder and ends `conflict`, so a second one is the rule.
_IDENTITY_ATTEMPTS = 3


@dataclass
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    transient: list[AcceptedUpdate] = field(default_factory=list)
    permanent: list[Failure] = field(default_factory=list)


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
            log.warning("update %s failed: %s", updates[0].update_id, describe(exc))
            result.permanent = [(updates[0], _error_of(exc))]
            return result
        log.warning("batch failed, applying one by one: %s", describe(exc))
    for update in updates:
        try:
            result.outcomes += _apply_committed(runtime, [update])
        except Exception as exc:
            if is_transient(exc):
                result.transient.append(update)
            else:
                log.warning("update %s failed: %s", update.update_id, describe(exc))
                result.permanent.append((update, _error_of(exc)))
    return result


def _apply_committed(runtime: Runtime, updates: list[AcceptedUpdate]) -> list[Outcome]:
    """Apply in one transaction; when the identity index was the one to refuse, try again
    at once: the look-up then sees the holder, and the update ends `conflict` (an upsert
    racing to create: `applied` to the winner's contact) without a wait."""
    for attempt in range(1, _IDENTITY_ATTEMPTS + 1):
        try:
            with runtime.db.unit_of_work() as session:
                now = utcnow()
                # Its writes go with the COMMIT: nothing here reads them.
                outcomes = apply_batch(session, updates, now, with_commit=True)
                park_refused(session, outcomes, now)
                return outcomes
        except Exception as exc:
            # Still refused after these: retried later like any transient failure (23505).
            if attempt == _IDENTITY_ATTEMPTS or not must_apply_again(exc):
                raise
            log.info("identity taken by a concurrent write; applying again")
    raise AssertionError("unreachable")


def _error_of(exc: BaseException) -> dict[str, str]:
    # The exception text may quote personal data from the statement: name the type only.
    name = type(exc).__name__
    return {"code": "APPLY_FAILED", "message": f"The update could not be applied ({name})."}
