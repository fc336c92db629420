"""Webhook endpoints of the caller's account (DESIGN §4): register, read, change, remove,
rotate the secret, read the delivery attempts, replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_gateway.auth import require
from api_gateway.body import read_json
from api_gateway.responses import JSONResponse, error_responses, ok
from api_gateway.routes.contact_update import body_schema
from api_gateway.state import GatewayDep
from contactsync.errors import NotFound, ValidationFailed
from contactsync.keys import Principal
from contactsync.models import WebhookEndpoint
from contactsync.schemas import DeletedEnvelope
from contactsync.timeutil import isoformat, utcnow
from contactsync.webhook_endpoints import (
    EndpointChange,
    announce_change_async,
    attempt_to_dict,
    create_endpoint,
    delete_endpoint,
    endpoint_to_dict,
    get_endpoint,
    list_attempts,
    list_endpoints,
    replay,
    rotate_secret,
    update_endpoint,
)
from contactsync.webhook_schemas import (
    WEBHOOK_ID_PATTERN,
    ReplayEnvelope,
    RotatedSecretEnvelope,
    WebhookAttemptListEnvelope,
    WebhookCreate,
    WebhookCreatedEnvelope,
    WebhookEnvelope,
    WebhookListEnvelope,
    WebhookPatch,
    WebhookReplay,
    instant,
    parse_webhook_body,
)
from contactsync.webhook_urls import UnsafeWebhookUrl

router = APIRouter(prefix="/external/v1", tags=["webhooks"])

Manager = Annotated[Principal, Depends(require("webhooks:manage"))]
ONE = "/webhooks/{webhook_id}"
_CURSOR_HELP = "next_cursor of the previous page"


def _not_found() -> NotFound:
    return NotFound("Webhook not found.")


def _unsafe(exc: UnsafeWebhookUrl) -> ValidationFailed:
    return ValidationFailed({"url": exc.reason}, "The webhook URL is refused.")


def _found(session: Session, principal: Principal, webhook_id: str) -> WebhookEndpoint:
    endpoint = get_endpoint(session, principal.account_id, webhook_id, for_update=True)
    if endpoint is None:
        raise _not_found()
    return endpoint


async def _in_thread(webhook_id: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if not WEBHOOK_ID_PATTERN.fullmatch(webhook_id):
        raise _not_found()  # before the database: NUL, huge, ...
    return await run_in_threadpool(work)


@router.post(
    "/webhooks",
    response_model=None,
    status_code=201,
    openapi_extra=body_schema(WebhookCreate),
    responses={201: {"model": WebhookCreatedEnvelope}, **error_responses(400, 403, 413, 415)},
)
async def create(request: Request, principal: Manager, gateway: GatewayDep) -> JSONResponse:
    """Register an endpoint; the answer holds its signing secret, shown only here."""
    body = parse_webhook_body(WebhookCreate, await read_json(request))

    def insert() -> dict[str, Any]:
        with gateway.db.unit_of_work() as session:
            endpoint, secret = create_endpoint(
                session, gateway.settings, principal.account_id, body.url, list(body.events),
                body.description, utcnow(),
            )
            return {**endpoint_to_dict(endpoint), "secret": secret}

    try:
        created = await run_in_threadpool(insert)
    except UnsafeWebhookUrl as exc:
        raise _unsafe(exc) from None
    await announce_change_async(gateway.redis)
    return ok(created, status=201)


@router.get(
    "/webhooks",
    response_model=None,
    responses={200: {"model": WebhookListEnvelope}, **error_responses(403)},
)
async def list_all(principal: Manager, gateway: GatewayDep) -> JSONResponse:
    """List the account's endpoints, oldest first."""

    def load() -> dict[str, Any]:
        with gateway.db.reading() as session:
            endpoints = list_endpoints(session, principal.account_id)
            return {"webhooks": [endpoint_to_dict(e) for e in endpoints]}

    return ok(await run_in_threadpool(load))


@router.get(
    ONE,
    response_model=None,
    responses={200: {"model": WebhookEnvelope}, **error_responses(403, 404)},
)
async def read(webhook_id: str, principal: Manager, gateway: GatewayDep) -> JSONResponse:
    """Return one endpoint of the account."""

    def load() -> dict[str, Any]:
        with gateway.db.reading() as session:
            endpoint = get_endpoint(session, principal.account_id, webhook_id)
            if endpoint is None:
                raise _not_found()
            return endpoint_to_dict(endpoint)

    return ok(await _in_thread(webhook_id, load))


@router.patch(
    ONE,
    response_model=None,
    openapi_extra=body_schema(WebhookPatch),
    responses={200: {"model": WebhookEnvelope}, **error_responses(400, 403, 404, 413, 415)},
)
async def change(
    webhook_id: str, request: Request, principal: Manager, gateway: GatewayDep
) -> JSONResponse:
    """Change `url`, `events`, `description` or `enabled`; enabling again clears the reason
    it was disabled."""
    body = parse_webhook_body(WebhookPatch, await read_json(request))
    wanted = EndpointChange(
        url=body.url, events=list(body.events) if body.events is not None else None,
        description=body.description, enabled=body.enabled,
    )

    def save() -> dict[str, Any]:
        with gateway.db.unit_of_work() as session:
            endpoint = _found(session, principal, webhook_id)
            return endpoint_to_dict(
                update_endpoint(session, gateway.settings, endpoint, wanted, utcnow())
            )

    try:
        changed = await _in_thread(webhook_id, save)
    except UnsafeWebhookUrl as exc:
        raise _unsafe(exc) from None
    await announce_change_async(gateway.redis)
    return ok(changed)


@router.delete(
    ONE,
    response_model=None,
    responses={200: {"model": DeletedEnvelope}, **error_responses(403, 404)},
)
async def remove(webhook_id: str, principal: Manager, gateway: GatewayDep) -> JSONResponse:
    """Remove an endpoint, with its pending deliveries and its record of attempts."""

    def drop() -> dict[str, Any]:
        with gateway.db.unit_of_work() as session:
            if not delete_endpoint(session, principal.account_id, webhook_id):
                raise _not_found()
            return {}

    await _in_thread(webhook_id, drop)
    await announce_change_async(gateway.redis)
    return JSONResponse({"success": True, "message": "Webhook deleted successfully"})


@router.post(
    ONE + "/rotate-secret",
    response_model=None,
    responses={200: {"model": RotatedSecretEnvelope}, **error_responses(403, 404)},
)
async def rotate(webhook_id: str, principal: Manager, gateway: GatewayDep) -> JSONResponse:
    """Give the endpoint a new secret, shown only here; for 24 h deliveries carry a signature
    by the previous secret too."""

    def save() -> dict[str, Any]:
        with gateway.db.unit_of_work() as session:
            endpoint = _found(session, principal, webhook_id)
            secret = rotate_secret(session, gateway.settings, endpoint, utcnow())
            assert endpoint.previous_secret_expires_at is not None
            return {"id": endpoint.id, "secret": secret,
                    "previous_secret_expires_at": isoformat(endpoint.previous_secret_expires_at)}

    rotated = await _in_thread(webhook_id, save)
    await announce_change_async(gateway.redis)
    return ok(rotated)


@router.get(
    ONE + "/deliveries",
    response_model=None,
    responses={200: {"model": WebhookAttemptListEnvelope}, **error_responses(400, 403, 404)},
)
async def deliveries(
    webhook_id: str,
    principal: Manager,
    gateway: GatewayDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=20, pattern="^[0-9]+$", description=_CURSOR_HELP)
    ] = None,
) -> JSONResponse:
    """Return the endpoint's delivery attempts, newest first: event, time, status code,
    duration, error."""
    before = int(cursor) if cursor is not None else None

    def load() -> dict[str, Any]:
        with gateway.db.reading() as session:
            if get_endpoint(session, principal.account_id, webhook_id) is None:
                raise _not_found()
            page, after = list_attempts(session, webhook_id, limit=limit, before=before)
            return {"attempts": [attempt_to_dict(a, status) for a, status in page],
                    "next_cursor": str(after) if after is not None else None}

    return ok(await _in_thread(webhook_id, load))


@router.post(
    ONE + "/replay",
    response_model=None,
    status_code=202,
    openapi_extra=body_schema(WebhookReplay),
    responses={202: {"model": ReplayEnvelope}, **error_responses(400, 403, 404, 413, 415)},
)
async def replay_since(
    webhook_id: str, request: Request, principal: Manager, gateway: GatewayDep
) -> JSONResponse:
    """Send the account's kept events since `since` to this endpoint again (events are kept
    7 days by default); answers how many will be sent."""
    body = parse_webhook_body(WebhookReplay, await read_json(request))
    since = instant(body.since)

    def save() -> dict[str, Any]:
        with gateway.db.unit_of_work() as session:
            endpoint = _found(session, principal, webhook_id)
            count = replay(session, endpoint, since, utcnow())
            return {"id": endpoint.id, "since": isoformat(since), "deliveries": count}

    return ok(await _in_thread(webhook_id, save), status=202)
