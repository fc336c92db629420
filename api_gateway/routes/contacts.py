"""Contacts: read, list, create, delete. (Updates are in `contact_update.py`.)"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from api_gateway.auth import require
from api_gateway.body import read_json
from api_gateway.responses import JSONResponse, error_responses, ok
from api_gateway.routes.contact_update import body_schema
from api_gateway.state import GatewayDep
from contactsync.contact_query import BadCursor, ContactFilter, SortKey, list_contacts
from contactsync.contacts import contact_to_dict, create_contact, delete_contact, get_contact
from contactsync.errors import NotFound, ValidationFailed
from contactsync.identities import parse_external_id
from contactsync.keys import Principal
from contactsync.schemas import (
    CONTACT_ID_PATTERN,
    SOURCES,
    ContactCreate,
    ContactEnvelope,
    ContactListEnvelope,
    DeletedEnvelope,
    parse_body,
)
from contactsync.timeutil import as_utc, utcnow

router = APIRouter(prefix="/external/v1", tags=["contacts"])

Writer = Annotated[Principal, Depends(require("contacts:write"))]
Reader = Annotated[Principal, Depends(require("contacts:read"))]
Deleter = Annotated[Principal, Depends(require("contacts:delete"))]
_TAGS_HELP = "comma-separated; a contact must have every one"
_CURSOR_HELP = "next_cursor of the previous page (created_at order only)"
NO_NUL = "^[^\\u0000]*$"  # PostgreSQL text cannot hold NUL: refuse it as a 400, not a 500
_SINCE_HELP = "RFC 3339 date-time with its offset, like 2024-01-15T10:30:00Z"
_EMAIL_HELP = "the contact with this email, compared case-insensitively"
_LINKEDIN_HELP = "the contact with this LinkedIn profile, given in any form of its URL"
_EXTERNAL_HELP = "`system:id`, like hubspot:51: the contact with this external id"
# The form `identities.parse_external_id` reads, stated for the OpenAPI document.
_EXTERNAL_ID = "^[a-z0-9_]{1,32}:[^\\u0000]{1,255}$"


def _instant(text: str) -> datetime:
    """Parse an RFC 3339 date-time; a time without its offset is ambiguous, so refused."""
    try:
        value = datetime.fromisoformat(text.upper())
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or "T" not in text.upper():
        raise ValidationFailed({"updated_since": f"must be an RFC 3339 date-time ({_SINCE_HELP})"})
    return as_utc(value)


@router.get(
    "/contacts/{contact_id}",
    response_model=None,
    responses={200: {"model": ContactEnvelope}, **error_responses(403, 404)},
)
async def read_contact(contact_id: str, principal: Reader, gateway: GatewayDep) -> JSONResponse:
    """Return one contact of the caller's account."""
    if not CONTACT_ID_PATTERN.fullmatch(contact_id):
        raise NotFound("Contact not found.")  # before the database: NUL, huge, ...

    def load() -> dict[str, Any] | None:
        with gateway.db.reading() as session:
            contact = get_contact(session, principal.account_id, contact_id)
            return contact_to_dict(contact) if contact is not None else None

    data = await run_in_threadpool(load)
    if data is None:
        raise NotFound("Contact not found.")
    return ok(data)


@router.get(
    "/contacts",
    response_model=None,
    responses={200: {"model": ContactListEnvelope}, **error_responses(400, 403)},
)
async def list_all(
    principal: Reader,
    gateway: GatewayDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    search: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    company: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    email: Annotated[
        str | None, Query(max_length=254, pattern=NO_NUL, description=_EMAIL_HELP)
    ] = None,
    linkedin_url: Annotated[
        str | None, Query(max_length=2048, pattern=NO_NUL, description=_LINKEDIN_HELP)
    ] = None,
    external_id: Annotated[
        str | None, Query(max_length=288, pattern=_EXTERNAL_ID, description=_EXTERNAL_HELP)
    ] = None,
    source: Literal["linkedin", "csv", "crm", "api", "manual", "other"] | None = None,
    tags: Annotated[
        str | None, Query(max_length=2000, pattern=NO_NUL, description=_TAGS_HELP)
    ] = None,
    sort_by: SortKey = "created_at",
    sort_order: Literal["asc", "desc"] = "desc",
    updated_since: Annotated[
        str | None, Query(description=_SINCE_HELP, json_schema_extra={"format": "date-time"})
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=500, pattern=NO_NUL, description=_CURSOR_HELP)
    ] = None,
) -> JSONResponse:
    """List the caller's contacts: filters, pages, and a stable cursor for sync jobs."""
    assert source is None or source in SOURCES
    # Stored text is NFC (DESIGN §2): a filter in another form of the same text still matches.
    search, company, email, tags, linkedin_url = (
        v and unicodedata.normalize("NFC", v)
        for v in (search, company, email, tags, linkedin_url)
    )
    wanted_tags = tuple(t.strip() for t in (tags or "").split(",") if t.strip())
    since = _instant(updated_since) if updated_since is not None else None
    system_id = None
    if external_id is not None:
        system_id = parse_external_id(external_id)
        if system_id is None:
            raise ValidationFailed({"external_id": "must be system:id, like hubspot:51 "
                                    "(system: 1 to 32 of a-z 0-9 _; id: 1 to 255 characters)"})
    query = ContactFilter(
        principal.account_id, search, company, email, source, wanted_tags, since,
        linkedin_url, system_id,
    )

    def load() -> dict[str, Any]:
        with gateway.db.reading() as session:
            result = list_contacts(
                session, query, limit=limit, page=page, sort_by=sort_by,
                descending=sort_order == "desc", cursor=cursor,
            )
            return {
                "contacts": [contact_to_dict(c) for c in result.contacts],
                "pagination": {
                    "page": page if cursor is None else None,
                    "limit": limit,
                    "total": result.total,
                    "total_pages": -(-result.total // limit),
                    "next_cursor": result.next_cursor,
                },
            }

    try:
        return ok(await run_in_threadpool(load))
    except BadCursor as exc:
        raise ValidationFailed({"cursor": str(exc)}) from None


@router.post(
    "/contacts",
    response_model=None,
    status_code=201,
    openapi_extra=body_schema(ContactCreate),
    responses={201: {"model": ContactEnvelope}, **error_responses(400, 403, 409, 413, 415)},
)
async def create(request: Request, principal: Writer, gateway: GatewayDep) -> JSONResponse:
    """Create a contact; `name` is required and `source` defaults to "other". 409 when
    another contact of the account has its email, LinkedIn URL or one of its external ids."""
    fields = parse_body(ContactCreate, await read_json(request)).model_dump()

    def insert() -> dict[str, Any]:
        with gateway.db.unit_of_work() as session:
            contact = create_contact(session, principal.account_id, fields)
            session.flush()
            return contact_to_dict(contact)

    return ok(await run_in_threadpool(insert), status=201)


@router.delete(
    "/contacts/{contact_id}",
    response_model=None,
    responses={200: {"model": DeletedEnvelope}, **error_responses(403, 404)},
)
async def delete(contact_id: str, principal: Deleter, gateway: GatewayDep) -> JSONResponse:
    """Delete a contact; emits `contact.deleted`, and its queued updates end `not_found`."""
    if not CONTACT_ID_PATTERN.fullmatch(contact_id):
        raise NotFound("Contact not found.")

    def remove() -> bool:
        with gateway.db.unit_of_work() as session:
            return delete_contact(session, principal.account_id, contact_id, utcnow())

    if not await run_in_threadpool(remove):
        raise NotFound("Contact not found.")
    return JSONResponse({"success": True, "message": "Contact deleted successfully"})
