"""What every batch route shares: its `Idempotency-Key`, its update tokens and its one flush.

A batch is one request: its key is reserved by the accept script in the same call that
queues its items (the key rides on the first item, and the items share one flush), and its
answer, every item's result with its update id and every invalid item's error, is stored
under the key once given. A key seen before is answered before any update token is spent:
a replayed batch queues nothing, so it costs its request token only. A retry racing its
first request past that look-up spends the tokens and is answered from the script's refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fastapi import Request

from api_gateway import idempotency
from api_gateway.backlog import BacklogGauge, refusal
from api_gateway.ratelimit import RateLimiter
from api_gateway.responses import JSONResponse
from api_gateway.state import Gateway
from contactsync.errors import ValidationFailed
from contactsync.keys import Principal
from contactsync.queue.accept import Accepted, BacklogRefused, Idempotency, Replayed, Submission
from contactsync.schemas import MAX_BATCH_ITEMS
from contactsync.updates import AcceptedUpdate

Result = dict[str, Any]


def batch_items(body: Any, field: str) -> list[Any]:
    """Return the items of a batch body `{field: [...]}`, or raise `ValidationFailed`."""
    if not isinstance(body, dict):
        raise ValidationFailed({"_body": "The body must be a JSON object."})
    unknown = sorted(set(body) - {field})
    if unknown:
        raise ValidationFailed({unknown[0]: "Unknown field."})
    items = body.get(field)
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise ValidationFailed({field: f"must be an array of 1 to {MAX_BATCH_ITEMS} {field}"})
    return items


def queued(index: int, submission: Submission, update: AcceptedUpdate) -> Result:
    """Return a queued item's result."""
    return {"index": index, "id": submission.contact_id, "update_id": update.update_id,
            "status": "queued"}


async def earlier_answer(
    request: Request, principal: Principal, gateway: Gateway, body: Any
) -> tuple[Idempotency | None, JSONResponse | None]:
    """Return the request's key, and the answer already due to it when it was seen before."""
    idem = idempotency.of_request(request, "POST", body)
    if idem is None:
        return None, None
    record = await gateway.enqueuer.idempotency_answer(principal.account_id, idem)
    return idem, None if record is None else idempotency.replay(record, idem)


async def queue_batch(
    request: Request, principal: Principal, gateway: Gateway, idem: Idempotency | None,
    results: list[Result | None], submissions: list[tuple[int, Submission]],
    result: Callable[[int, Submission, AcceptedUpdate], Result] = queued,
) -> JSONResponse:
    """Spend the items' update tokens, queue them in one flush, and answer 202 with every
    item's result (`results` holds the invalid items' errors already); keep that answer
    under the request's key."""
    account_id = principal.account_id
    if not submissions:
        payload = _payload(results)
        if idem is not None:
            record = await gateway.enqueuer.keep_first_answer(
                account_id, idem, idempotency.stored(202, payload)
            )
            if record is not None:
                return idempotency.replay(record, idem)
        return JSONResponse(payload, status_code=202)
    limiter: RateLimiter = request.app.state.rate_limiter
    await limiter.take_updates(
        principal.key_id, principal.update_rate_limit_per_second, len(submissions)
    )
    batch_id = submissions[0][1].update_id
    tagged = [
        replace(submission, batch_id=batch_id, idempotency=None if n else idem)
        for n, (_, submission) in enumerate(submissions)
    ]
    outcomes = await gateway.publisher.submit_many(tagged)
    if isinstance(outcomes[0], Replayed):  # the key's first request got past the look-up
        assert idem is not None
        return idempotency.replay(outcomes[0].record, idem)
    if any(isinstance(o, BacklogRefused) for o in outcomes):
        # One flush holds the whole batch, and the script takes an account's flush whole or
        # refuses it whole: none of it was queued, and its key was not reserved.
        backlog: BacklogGauge = request.app.state.backlog
        backlog.note_refused(account_id)
        raise refusal()
    for (index, submission), outcome in zip(submissions, outcomes, strict=True):
        assert isinstance(outcome, Accepted)  # the batch's flush took it whole
        results[index] = result(index, submission, outcome.update)
    payload = _payload(results)
    if idem is not None:
        await gateway.enqueuer.finish_idempotency(
            account_id, idem, batch_id, idempotency.stored(202, payload)
        )
    return JSONResponse(payload, status_code=202)


def _payload(results: list[Result | None]) -> dict[str, Any]:
    return {"success": True, "data": {"results": results}}
