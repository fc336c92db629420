"""Batch update: up to 1,000 updates in one request, always asynchronous, on the bulk queue."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from api_gateway import idempotency
from api_gateway.auth import require
from api_gateway.backlog import BacklogGauge
from api_gateway.batches import batch_items, earlier_answer, queue_batch
from api_gateway.body import read_json
from api_gateway.responses import JSONResponse, error_responses
from api_gateway.state import GatewayDep
from contactsync import names
from contactsync.errors import ValidationFailed
from contactsync.ids import new_update_id
from contactsync.keys import Principal
from contactsync.queue.accept import Submission
from contactsync.schemas import (
    CONTACT_ID_PATTERN,
    MAX_BATCH_BODY_BYTES,
    BatchEnvelope,
    BatchRequest,
    ContactUpdate,
    parse_body,
)

router = APIRouter(prefix="/external/v1", tags=["contacts"])

Writer = Annotated[Principal, Depends(require("contacts:write"))]


def _item_error(index: int, contact_id: Any, fields: dict[str, str]) -> dict[str, Any]:
    return {
        "index": index,
        "id": contact_id if isinstance(contact_id, str) else None,
        "error": {
            "code": "VALIDATION_ERROR",
            "message": "The update is not valid.",
            "details": {"fields": fields},
        },
    }


@router.post(
    "/contacts/batch/update",
    response_model=None,
    status_code=202,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": BatchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    }}}, "parameters": [idempotency.HEADER]},
    responses={202: {"model": BatchEnvelope}, **error_responses(400, 403, 409, 413, 415, 422)},
)
async def batch_update(request: Request, principal: Writer, gateway: GatewayDep) -> JSONResponse:
    """Queue up to 1,000 updates; each item is accepted or rejected on its own.

    With an `Idempotency-Key`, the whole batch is one request: the same key and body get the
    same results and update ids, and the batch is applied once.
    """
    body = await read_json(request, limit=MAX_BATCH_BODY_BYTES)
    items = batch_items(body, "updates")
    idem, answer = await earlier_answer(request, principal, gateway, body)
    if answer is not None:
        return answer
    backlog: BacklogGauge = request.app.state.backlog
    backlog.check(principal.account_id)
    results: list[dict[str, Any] | None] = [None] * len(items)
    submissions: list[tuple[int, Submission]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            results[index] = _item_error(index, None, {"_body": "Each update must be an object."})
            continue
        fields = dict(item)
        contact_id = fields.pop("id", None)
        if not isinstance(contact_id, str):
            results[index] = _item_error(index, contact_id, {"id": "A contact id is required."})
            continue
        if not CONTACT_ID_PATTERN.fullmatch(contact_id):
            # No contact can have this id: refused here, as PUT refuses it, never queued.
            results[index] = {"index": index, "id": contact_id, "error": {
                "code": "NOT_FOUND", "message": "Contact not found.", "details": {},
            }}
            continue
        try:
            patch = parse_body(ContactUpdate, fields).patch()
        except ValidationFailed as exc:
            results[index] = _item_error(index, contact_id, exc.fields)
            continue
        submissions.append((index, Submission(
            update_id=new_update_id(), account_id=principal.account_id, contact_id=contact_id,
            patch=patch, queue=names.BULK_QUEUE,
        )))
    return await queue_batch(request, principal, gateway, idem, results, submissions)
