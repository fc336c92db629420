"""The core path: `PUT /external/v1/contacts/{id}` in both response modes."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from api_gateway import idempotency
from api_gateway.auth import authenticate, check_permission
from api_gateway.backlog import refusal as backlog_refusal
from api_gateway.body import read_json_plain
from api_gateway.http_metrics import ENQUEUE_SECONDS, WAIT_OUTCOMES
from api_gateway.ratelimit import Token
from api_gateway.responses import JSONResponse, error_responses
from api_gateway.state import Gateway
from contactsync import names
from contactsync.errors import NotFound
from contactsync.ids import new_update_id
from contactsync.queue.accept import Accepted, BacklogRefused, Replayed, Submission
from contactsync.schemas import (
    CONTACT_ID_PATTERN,
    ContactEnvelope,
    ContactUpdate,
    UpdateRecordEnvelope,
    parse_body,
)
from contactsync.updates import AcceptedUpdate

router = APIRouter(prefix="/external/v1", tags=["contacts"])


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Return the OpenAPI request body of a route that reads `model` itself."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def wants_async(prefer: str | None) -> bool:
    if not prefer:
        return False
    return any(p.split(";")[0].strip().lower() == "respond-async" for p in prefer.split(","))


HEADERS = [
    {"name": "Prefer", "in": "header", "required": False,
     "description": "`respond-async`: answer 202 at once", "schema": {"type": "string"}},
    idempotency.HEADER,
]


ROUTE_PATH = "/external/v1/contacts/{contact_id}"


@router.put(
    ROUTE_PATH.removeprefix(router.prefix),
    response_model=None,
    openapi_extra={**body_schema(ContactUpdate), "parameters": HEADERS},
    responses={
        200: {"model": ContactEnvelope, "description": "The update was applied."},
        202: {
            "model": UpdateRecordEnvelope,
            "description": "Accepted; it applies shortly (`Location` names its status).",
        },
        **error_responses(400, 403, 404, 409, 413, 415, 422),
    },
)
async def update_contact(contact_id: str, request: Request) -> JSONResponse:
    """Update a contact: only the fields sent change; tags are replaced, custom fields merged."""
    # The busiest route reads its key and headers itself, and `api_gateway.edge` calls it
    # without FastAPI's routing: both cost more per request than everything it does. Its
    # rate-limit token is spent by the script that queues its update, in the same round trip
    # (`Token`: every way this request can spend its one token).
    gateway: Gateway = request.app.state.gateway
    principal = await authenticate(request)
    async with Token(request, principal) as token:
        check_permission(principal, "contacts:write")
        body, plain = await read_json_plain(request)
        patch = parse_body(ContactUpdate, body, plain=plain).patch()
        if not CONTACT_ID_PATTERN.fullmatch(contact_id):
            raise NotFound("Contact not found.")
        idem = idempotency.of_request(request, "PUT", body)
        if idem is None:  # with a key, the accept script answers a replay before the backlog
            request.app.state.backlog.check(principal.account_id)
        respond_async = wants_async(request.headers.get("prefer"))
        update_id = new_update_id()
        submission = Submission(
            update_id=update_id, account_id=principal.account_id, contact_id=contact_id,
            patch=patch, queue=names.UPDATES_QUEUE, idempotency=idem,
            reply_to=None if respond_async else gateway.waiter.channel,
            rate_limit=token.for_script(),
        )
        if not respond_async:
            gateway.waiter.expect(update_id)
        started = time.perf_counter()
        try:
            outcome = await gateway.publisher.submit(submission)
            ENQUEUE_SECONDS.observe(time.perf_counter() - started)
        except BaseException:
            gateway.waiter.forget(update_id)
            raise
        if not isinstance(outcome, Accepted):
            gateway.waiter.forget(update_id)
        token.settle(outcome)
        if isinstance(outcome, BacklogRefused):
            request.app.state.backlog.note_refused(principal.account_id)
            raise backlog_refusal()
        if isinstance(outcome, Replayed):
            assert idem is not None
            return idempotency.replay(outcome.record, idem)
    assert isinstance(outcome, Accepted)  # the token's settle() answered a RateRefused 429
    if respond_async:
        status, payload, headers = accepted(outcome.update, async_applied=True)
    else:
        status, payload, headers = await wait_for(gateway, outcome.update)
    if idem is not None:
        await gateway.enqueuer.finish_idempotency(
            principal.account_id, idem, update_id,
            idempotency.stored(status, payload, headers),
        )
    return JSONResponse(payload, status_code=status, headers=headers)


def accepted(
    update: AcceptedUpdate, *, async_applied: bool
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Location": f"/external/v1/updates/{update.update_id}"}
    if async_applied:
        headers["Preference-Applied"] = "respond-async"
    return 202, {"success": True, "data": update.queued_record()}, headers


async def wait_for(
    gateway: Gateway, update: AcceptedUpdate
) -> tuple[int, dict[str, Any], dict[str, str]]:
    result = await gateway.waiter.wait(update.update_id, gateway.settings.sync_wait_seconds)
    WAIT_OUTCOMES.labels("timeout" if result is None else str(result["status"])).inc()
    if result is None:
        return accepted(update, async_applied=False)
    status = result["status"]
    if status in ("applied", "noop", "created"):  # created: only an upsert
        return 201 if status == "created" else 200, {"success": True, "data": result["contact"]}, {}
    error = result.get("error") or {}
    details: dict[str, Any]
    if status == "not_found":
        code, http, details = "NOT_FOUND", 404, {}
    elif status == "conflict":  # the details name the field and the contact that holds it
        code, http, details = "CONFLICT", 409, error.get("details") or {}
    elif error.get("code") == "VALIDATION_ERROR":
        details = error.get("details") or {"fields": {"custom_fields": error["message"]}}
        code, http = "VALIDATION_ERROR", 400
    else:
        code, http, details = "INTERNAL_ERROR", 500, {"update_id": update.update_id}
    message = "Contact not found." if status == "not_found" else error.get("message", "Failed.")
    envelope = {"success": False, "error": {"code": code, "message": message, "details": details}}
    return http, envelope, {}
