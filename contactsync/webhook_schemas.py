"""The webhook endpoints' part of the public contract: request bodies and response shapes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from contactsync.errors import ValidationFailed
from contactsync.events import CONTACT_CREATED, CONTACT_DELETED, CONTACT_UPDATED
from contactsync.messages import body_messages
from contactsync.timeutil import as_utc

EVENT_TYPES = (CONTACT_UPDATED, CONTACT_CREATED, CONTACT_DELETED)
WEBHOOK_ID_PATTERN = re.compile(r"whk_[a-z0-9]{20}")
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 500
_LEAP_SECOND = re.compile(r"(T\d\d:\d\d:)60")

EventType = Literal["contact.updated", "contact.created", "contact.deleted"]


def _distinct(events: list[str]) -> list[str]:
    return sorted(set(events))


# The checks of `webhook_urls.check_url` need DNS, so the schema states only the form.
WebhookUrl = Annotated[
    str,
    Field(min_length=1, max_length=MAX_URL_LENGTH, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\u0000-\u0020]+$",
          description="https:// and a public host (http:// and private hosts only when the "
          "service allows insecure webhook URLs, in development)"),
]
EventTypes = Annotated[
    list[EventType],
    Field(min_length=1, max_length=len(EVENT_TYPES),
          description="the event types this endpoint receives; duplicates are dropped"),
    AfterValidator(_distinct),
]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_LENGTH, pattern=r"^[^\u0000]*$")]


def _no_defaults(schema: dict[str, Any]) -> None:
    # A `None` default means "not sent"; null itself is refused, so the document offers neither.
    for prop in schema.get("properties", {}).values():
        if prop.get("default", 0) is None:
            del prop["default"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_no_defaults)


class WebhookCreate(_Body):
    """Register an endpoint."""

    url: WebhookUrl
    events: EventTypes
    description: Description = ""


class WebhookPatch(_Body):
    """Change an endpoint: only the fields present change."""

    url: WebhookUrl | SkipJsonSchema[None] = None
    events: EventTypes | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    enabled: bool | SkipJsonSchema[None] = None


def _rfc3339(text: str) -> str:
    instant(text)
    return text


def instant(text: str) -> datetime:
    """Parse an RFC 3339 date-time in UTC; one without its offset is ambiguous, so refused."""
    upper = _LEAP_SECOND.sub(r"\g<1>59", text.upper())  # RFC 3339 allows :60; Python does not
    try:
        value = datetime.fromisoformat(upper)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or "T" not in upper:
        raise ValueError("must be an RFC 3339 date-time with its offset, like "
                         "2024-01-15T10:30:00Z")
    try:
        return as_utc(value)
    except OverflowError:  # year 1 east of UTC, or 9999 west of it: as far as UTC goes
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


class WebhookReplay(_Body):
    """Send again every event of the account since a time."""

    since: Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"}),
                     AfterValidator(_rfc3339)]


B = TypeVar("B", bound=_Body)


def parse_webhook_body(model: type[B], body: Any) -> B:
    """Validate a decoded JSON body, or raise `ValidationFailed` naming each bad field."""
    if not isinstance(body, dict):
        raise ValidationFailed({"_body": "The body must be a JSON object."})
    fields = model.model_fields
    nulls = {k: "May not be null." for k, v in body.items() if v is None and k in fields}
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        messages = body_messages(exc.errors(include_url=False), body)
        raise ValidationFailed({**messages, **nulls}) from None
    if nulls:
        raise ValidationFailed(nulls)
    return parsed


class WebhookEndpointOut(BaseModel):
    id: str
    url: str
    events: list[EventType]
    enabled: bool
    description: str
    created_at: str
    updated_at: str
    disabled_reason: str | None = Field(description="why the service disabled it, if it did")


class WebhookEndpointWithSecret(WebhookEndpointOut):
    secret: str = Field(description="whsec_…: shown only in this answer; store it now")


class WebhookEnvelope(BaseModel):
    success: Literal[True] = True
    data: WebhookEndpointOut


class WebhookCreatedEnvelope(BaseModel):
    success: Literal[True] = True
    data: WebhookEndpointWithSecret


class WebhookList(BaseModel):
    webhooks: list[WebhookEndpointOut]


class WebhookListEnvelope(BaseModel):
    success: Literal[True] = True
    data: WebhookList


class RotatedSecret(BaseModel):
    id: str
    secret: str = Field(description="the new whsec_…, shown only in this answer")
    previous_secret_expires_at: str = Field(
        description="until then deliveries carry a signature by the previous secret too"
    )


class RotatedSecretEnvelope(BaseModel):
    success: Literal[True] = True
    data: RotatedSecret


class WebhookAttemptOut(BaseModel):
    event_id: str
    attempted_at: str
    status_code: int | None
    duration_ms: int
    error: str | None
    delivery_status: Literal["pending", "succeeded", "failed"]


class WebhookAttemptList(BaseModel):
    attempts: list[WebhookAttemptOut] = Field(description="newest first")
    next_cursor: str | None = Field(description="the cursor of the next (older) page, if any")


class WebhookAttemptListEnvelope(BaseModel):
    success: Literal[True] = True
    data: WebhookAttemptList


class ReplayAccepted(BaseModel):
    id: str
    since: str
    deliveries: int = Field(description="how many events will be sent again")


class ReplayEnvelope(BaseModel):
    success: Literal[True] = True
    data: ReplayAccepted
