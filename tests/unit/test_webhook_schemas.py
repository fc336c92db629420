"""Webhook bodies: the event types, nulls and unknown fields refused, RFC 3339 `since`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contactsync.errors import ValidationFailed
from contactsync.webhook_schemas import (
    WebhookCreate,
    WebhookPatch,
    WebhookReplay,
    instant,
    parse_webhook_body,
)

URL = "https://93.184.216.34/hook"


def test_events_are_the_three_types_without_repeats() -> None:
    body = parse_webhook_body(
        WebhookCreate, {"url": URL, "events": ["contact.updated", "contact.created",
                                               "contact.updated"]})
    assert body.events == ["contact.created", "contact.updated"]
    assert body.description == ""


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (WebhookCreate, {"url": URL, "events": ["contact.merged"]}, "events"),
        (WebhookCreate, {"url": URL, "events": []}, "events"),
        (WebhookCreate, {"url": URL, "events": "contact.updated"}, "events"),
        (WebhookCreate, {"url": "hooks.example.com", "events": ["contact.updated"]}, "url"),
        (WebhookCreate, {"url": URL, "events": ["contact.updated"], "id": "x"}, "id"),
        (WebhookPatch, {"enabled": None}, "enabled"),
        (WebhookPatch, {"enabled": 1}, "enabled"),
        (WebhookPatch, {"description": "a\u0000b"}, "description"),
        (WebhookReplay, {"since": "2024-01-15T10:30:00"}, "since"),
        (WebhookReplay, {"since": 1705314600}, "since"),
    ],
)
def test_refused_naming_the_field(model: type[WebhookCreate], body: dict[str, object],
                                  field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_webhook_body(model, body)
    assert list(caught.value.fields) == [field]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:30:00Z", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15t12:30:00+02:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("0001-01-01T00:00:00+01:00", datetime.min.replace(tzinfo=UTC)),
        ("9999-12-31T23:59:59-01:00", datetime.max.replace(tzinfo=UTC)),
    ],
)
def test_since_is_any_rfc_3339_time(text: str, expected: datetime) -> None:
    assert instant(text) == expected


@pytest.mark.parametrize("text", ["2024-01-15", "2024-01-15T10:30:00", "yesterday", ""])
def test_since_without_offset_or_time_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        instant(text)
