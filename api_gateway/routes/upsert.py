"""Upsert by identity: one item (both response modes) or a batch of up to 1,000 (bulk queue).

The gateway only validates and queues: whether an item updates or creates is decided by the
worker, in the transaction that writes (`contactsync.batch_apply`). An upsert's `contact_id`
travels as the id of the contact it would create (`ids.contact_id_for`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from api_gateway import idempotency
from api_gateway.auth import require
from api_gateway.backlog import BacklogGauge
from api_gateway.backlog import refusal as backlog_refusal
from api_gateway.batches import batch_items, earlier_answer, queue_batch
from api_gateway.body import read_json
from api_gateway.responses import JSONResponse, error_responses
from api_gateway.routes.contact_update import HEADERS, accepted, body_schema, wait_for, wants_async
from api_gateway.state import GatewayDep
from contactsync import names
from contactsync.errors import ValidationFailed
from contactsync.ids import contact_id_for, new_update_id
from contactsync.keys import Principal
from contactsync.queue.accept import Accepted, BacklogRefused, Idempotency, Replayed, Submission
from contactsync.schemas import (
    MAX_BATCH_BODY_BYTES,
    BatchEnvelope,
    ContactEnvelope,
    ContactUpsert,
    UpdateRecordEnvelope,
    UpsertBatchRequest,
    parse_body,
)
from contactsync.updates import AcceptedUpdate

router = APIRouter(prefix="/external/v1", tags=["contacts"])

Writer = Annotated[Principal, Depends(require("contacts:write"))]


def _submission(
    principal: Principal, item: Any, queue: str, idem: Idempotency | None = None,
    reply_to: str | None = None,
) -> Submission:
    """Validate one upsert item (or raise `ValidationFailed`) and return its submission."""
    match_on, patch = parse_body(ContactUpsert, item).upsert()
    update_id = new_update_id()
    return Submission(
        update_id=update_id, account_id=principal.account_id,
        contact_id=contact_id_for(update_id), patch=patch, queue=queue, idempotency=idem,
        reply_to=reply_to, match_on=match_on,
    )


def _queued(index: int, submission: Submission, update: AcceptedUpdate) -> dict[str, Any]:
    # Which contact the item reaches is the worker's decision: the update record says.
    return {"index": index, "id": None, "update_id": update.update_id, "status": "queued"}


@router.post(
    "/contacts/upsert",
    response_model=None,
    openapi_extra={**body_schema(ContactUpsert), "parameters": HEADERS},
    responses={
        200: {"model": ContactEnvelope, "description": "A contact matched and was updated."},
        201: {"model": ContactEnvelope, "description": "No contact matched: one was created."},
        202: {
            "model": UpdateRecordEnvelope,
            "description": "Accepted; it applies shortly (`Location` names its status).",
        },
        **error_responses(400, 403, 409, 413, 415, 422),
    },
)
async def upsert_contact(request: Request, principal: Writer, gateway: GatewayDep) -> JSONResponse:
    """Update the contact the first identity of `match_on` finds, or create one."""
    backlog: BacklogGauge = request.app.state.backlog
    body = await read_json(request)
    idem = idempotency.of_request(request, "POST", body)
    if idem is None:  # with a key, the accept script answers a replay before the backlog
        backlog.check(principal.account_id)
    respond_async = wants_async(request.headers.get("prefer"))
    submission = _submission(
        principal, body, names.UPDATES_QUEUE, idem,
        None if respond_async else gateway.waiter.channel,
    )
    if not respond_async:
        gateway.waiter.expect(submission.update_id)
    try:
        outcome = await gateway.publisher.submit(submission)
    except BaseException:
        gateway.waiter.forget(submission.update_id)
        raise
    if not isinstance(outcome, Accepted):
        gateway.waiter.forget(submission.update_id)
    if isinstance(outcome, BacklogRefused):
        backlog.note_refused(principal.account_id)
        raise backlog_refusal()
    if isinstance(outcome, Replayed):
        assert idem is not None
        return idempotency.replay(outcome.record, idem)
    assert isinstance(outcome, Accepted)  # no rate-limit token rides on this submission
    if respond_async:
        status, payload, headers = accepted(outcome.update, async_applied=True)
    else:
        status, payload, headers = await wait_for(gateway, outcome.update)
    if idem is not None:
        await gateway.enqueuer.finish_idempotency(
            principal.account_id, idem, submission.update_id,
            idempotency.stored(status, payload, headers),
        )
    return JSONResponse(payload, status_code=status, headers=headers)


def _item_error(index: int, fields: dict[str, str]) -> dict[str, Any]:
    return {"index": index, "id": None, "error": {
        "code": "VALIDATION_ERROR", "message": "The upsert is not valid.",
        "details": {"fields": fields},
    }}


@router.post(
    "/contacts/batch/upsert",
    response_model=None,
    status_code=202,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": UpsertBatchRequest.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    }}}, "parameters": [idempotency.HEADER]},
    responses={202: {"model": BatchEnvelope}, **error_responses(400, 403, 409, 413, 415, 422)},
)
async def batch_upsert(request: Request, principal: Writer, gateway: GatewayDep) -> JSONResponse:
    """Queue up to 1,000 upserts by identity; each item is accepted or rejected on its own.

    With an `Idempotency-Key`, the whole batch is one request: the same key and body get the
    same results and update ids, and the batch is applied once.
    """
    body = await read_json(request, limit=MAX_BATCH_BODY_BYTES)
    items = batch_items(body, "upserts")
    idem, answer = await earlier_answer(request, principal, gateway, body)
    if answer is not None:
        return answer
    backlog: BacklogGauge = request.app.state.backlog
    backlog.check(principal.account_id)
    results: list[dict[str, Any] | None] = [None] * len(items)
    submissions: list[tuple[int, Submission]] = []
    for index, item in enumerate(items):
        try:
            submissions.append((index, _submission(principal, item, names.BULK_QUEUE)))
        except ValidationFailed as exc:
            results[index] = _item_error(index, exc.fields)
    return await queue_batch(request, principal, gateway, idem, results, submissions, _queued)
