"""The public contract: request bodies with their validation rules, and response shapes."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import orjson
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)
from pydantic.json_schema import SkipJsonSchema

from contactsync.errors import ValidationFailed
from contactsync.external_ids import ExternalIds
from contactsync.messages import body_messages
from contactsync.nfc import nfc
from contactsync.upserts import match_value

STRING_FIELDS = ("name", "email", "phone", "company", "position", "linkedin_url")
CLEARABLE_FIELDS = frozenset(STRING_FIELDS) - {"name"}
MAX_TAGS = 100
MAX_TAG_LENGTH = 64
MAX_CUSTOM_FIELDS = 100
MAX_CUSTOM_KEY_LENGTH = 64
MAX_CUSTOM_VALUE_LENGTH = 1000  # characters of a string value
# A contact's custom_fields as compact JSON in UTF-8 (`custom_fields_bytes`): bounds every
# event, stored record and answer that carries the contact.
MAX_CUSTOM_FIELDS_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_ITEMS = 1000
MAX_BATCH_BODY_BYTES = 4 * 1024 * 1024
# Every guard on input is a full match (`re.fullmatch`): with `re.match`, `$` also matches
# before a final newline, and `cnt_…\n` was queued, then failed in the database forever.
CONTACT_ID_PATTERN = re.compile(r"cnt_[a-z0-9]{12}")
SOURCES = ("linkedin", "csv", "crm", "api", "manual", "other")

_PHONE = re.compile(r"[0-9 +\-().]+")
# The OpenAPI document states each rule as exactly as JSON Schema can (Schemathesis holds the
# gateway to it). Limits count characters after trimming; NUL is refused in every string.
MAX_SAFE_INTEGER = 2**53 - 1  # larger integers lose precision in JavaScript clients
_NO_NUL = "^[^\\u0000]*$"
# Python's whitespace (str.isspace, which trimming uses), spelled out: `\s` differs between
# Python, ECMA and Rust regex engines, and the document must mean the same in each.
_SPACE = (
    "\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029"
    "\\u202f\\u205f\\u3000"
)
_NOT_BLANK = f"^[^\\u0000]*[^\\u0000{_SPACE}][^\\u0000]*$"
_PHONE_PATTERN = "^[ +\\-().]*([0-9][ +\\-().]*){5,}$"
HTTP_URL_PATTERN = (
    "^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9][^\\u0000-\\u0020/?#@\\[\\]\\\\]*"
    "([/?#][^\\u0000-\\u0020]*)?$"
)
_HTTP_URL = re.compile(HTTP_URL_PATTERN)


def _email(value: str) -> str:
    if len(value) > 254:
        raise ValueError("must be at most 254 characters")
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address ({exc})") from None


def _phone(value: str) -> str:
    if len(value) > 32:
        raise ValueError("must be at most 32 characters")
    if not _PHONE.fullmatch(value):
        raise ValueError("may hold only digits, spaces and + - ( ) .")
    if sum(ch.isdigit() for ch in value) < 5:
        raise ValueError("must hold at least 5 digits")
    return value


def _http_url(value: str) -> str:
    if len(value) > 2048:
        raise ValueError("must be at most 2048 characters")
    if not _HTTP_URL.fullmatch(value) or not urlsplit(value).hostname:
        raise ValueError("must be an http(s) URL with a host (and no user name)")
    return value


def _tags(values: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for index, tag in enumerate(values):
        if not 1 <= len(tag) <= MAX_TAG_LENGTH:
            raise ValueError(f"item {index} must be 1 to {MAX_TAG_LENGTH} characters")
        seen.setdefault(tag, None)
    if len(seen) > MAX_TAGS:
        raise ValueError(f"must hold at most {MAX_TAGS} distinct tags")
    return list(seen)


JsonScalar = str | int | float | bool | None


def custom_fields_bytes(values: dict[str, JsonScalar]) -> int:
    """Return the size of custom fields as compact JSON in UTF-8 (non-ASCII unescaped)."""
    return len(orjson.dumps(values))


def _custom_fields(values: dict[str, JsonScalar]) -> dict[str, JsonScalar]:
    if len(values) > MAX_CUSTOM_FIELDS:
        raise ValueError(f"must hold at most {MAX_CUSTOM_FIELDS} keys")
    for key, value in values.items():
        if not 1 <= len(key) <= MAX_CUSTOM_KEY_LENGTH:
            raise ValueError(f"key {key[:80]!r} must be 1 to {MAX_CUSTOM_KEY_LENGTH} characters")
        if isinstance(value, str) and len(value) > MAX_CUSTOM_VALUE_LENGTH:
            raise ValueError(
                f"the value of {key[:80]!r} must be at most {MAX_CUSTOM_VALUE_LENGTH} characters"
            )
    if custom_fields_bytes(values) > MAX_CUSTOM_FIELDS_BYTES:
        raise ValueError(
            f"must be at most {MAX_CUSTOM_FIELDS_BYTES} bytes as compact JSON (UTF-8)"
        )
    return values


def _text(max_length: int, pattern: str = _NO_NUL, **extra: Any) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "maxLength": max_length, "pattern": pattern, **extra})


Name = Annotated[
    str, Field(min_length=1, max_length=200), _text(200, _NOT_BLANK, minLength=1)
]
Text200 = Annotated[str, Field(max_length=200), _text(200)]
SPECIAL_USE_DOMAINS = ("arpa", "invalid", "local", "localhost", "onion", "test")
Email = Annotated[str, AfterValidator(_email), _text(
    254, format="email",
    description="Special-use domains (" + ", ".join(f".{d}" for d in SPECIAL_USE_DOMAINS)
    + ") are refused: no mail reaches them.",
)]
Phone = Annotated[str, AfterValidator(_phone), _text(32, _PHONE_PATTERN)]
HttpUrl = Annotated[str, AfterValidator(_http_url), _text(2048, HTTP_URL_PATTERN)]
_TAGS_SCHEMA = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_LENGTH, "pattern": _NOT_BLANK},
    "description": f"Replaces the tags; at most {MAX_TAGS} distinct ones, duplicates dropped "
    "(compared after trimming and Unicode normalisation, NFC).",
}
Tags = Annotated[
    list[Annotated[str, Field(strict=True)]], AfterValidator(_tags), WithJsonSchema(_TAGS_SCHEMA)
]
# Custom field keys and values are not trimmed: trimming keys could merge two of them. They are
# normalised to NFC like every string (`nfc`), where two keys that differ only in form are one.
_Verbatim = Annotated[str, StringConstraints(strip_whitespace=False)]
_SafeInt = Annotated[int, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
_SafeFloat = Annotated[
    float, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER, allow_inf_nan=False)
]
_SAFE_RANGE = {"minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER}
_CUSTOM_FIELDS_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_CUSTOM_FIELDS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_CUSTOM_KEY_LENGTH, "pattern": _NO_NUL},
    "additionalProperties": {"anyOf": [
        {"type": "string", "maxLength": MAX_CUSTOM_VALUE_LENGTH, "pattern": _NO_NUL},
        {"type": "integer", **_SAFE_RANGE},
        {"type": "number", **_SAFE_RANGE},
        {"type": "boolean"},
        {"type": "null"},
    ]},
    "description": "Merged key by key; a key set to null is removed. At most "
    f"{MAX_CUSTOM_FIELDS_BYTES} bytes as compact JSON (UTF-8), in the body and on the contact.",
}
CustomFields = Annotated[
    dict[_Verbatim, _Verbatim | _SafeInt | _SafeFloat | bool | None],
    AfterValidator(_custom_fields),
    WithJsonSchema(_CUSTOM_FIELDS_SCHEMA),
]


def _no_defaults(schema: dict[str, Any]) -> None:
    # `None` defaults mean "not sent": a client sending them would clear fields, or be refused.
    for prop in schema.get("properties", {}).values():
        if prop.get("default", 0) is None:
            del prop["default"]


class ContactFields(BaseModel):
    """Fields an update may carry; only those present in the body change."""

    model_config = ConfigDict(
        extra="forbid", strict=True, str_strip_whitespace=True, json_schema_extra=_no_defaults
    )

    # `None` stands for "not sent"; null itself is refused for these three, so the schema
    # does not offer it.
    name: Name | SkipJsonSchema[None] = None
    email: Email | None = None
    phone: Phone | None = None
    company: Text200 | None = None
    position: Text200 | None = None
    linkedin_url: HttpUrl | None = None
    tags: Tags | SkipJsonSchema[None] = None
    custom_fields: CustomFields | SkipJsonSchema[None] = None
    external_ids: ExternalIds | SkipJsonSchema[None] = None

    def patch(self) -> dict[str, Any]:
        """Return only the fields the client sent, normalized."""
        patch = self.model_dump(include=self.model_fields_set)
        for field in ("company", "position"):
            if patch.get(field) == "":
                patch[field] = None  # an empty string clears, as null does
        return patch


class ContactUpdate(ContactFields):
    """Body of `PUT /external/v1/contacts/{id}`."""


class ContactCreate(ContactFields):
    """Body of `POST /external/v1/contacts`."""

    name: Name
    source: Literal["linkedin", "csv", "crm", "api", "manual", "other"] = "other"


MATCH_NAME_PATTERN = "^(email|linkedin_url|external_ids\\.[a-z0-9_]{1,32})$"
_MATCH_NAME = re.compile(MATCH_NAME_PATTERN.strip("^$"))
MAX_MATCH_ON = 12  # email, linkedin_url and each of the at most 10 external ids
_MATCH_ON_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": MATCH_NAME_PATTERN},
        {"type": "array", "minItems": 1, "maxItems": MAX_MATCH_ON, "uniqueItems": True,
         "items": {"type": "string", "pattern": MATCH_NAME_PATTERN}},
    ],
    "description": "The identities that find the contact, tried in order: `email`, "
    "`linkedin_url`, `external_ids.<system>`. Each takes its value from the item itself, "
    "which must carry it. When none finds a contact, the item creates one (`name` is then "
    "required: without it the upsert ends `failed`).",
}


def _match_on(value: str | list[str]) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not 1 <= len(names) <= MAX_MATCH_ON or len(set(names)) != len(names):
        raise ValueError(f"must name 1 to {MAX_MATCH_ON} distinct identities")
    for name in names:
        if not _MATCH_NAME.fullmatch(name):
            raise ValueError(f"{name[:80]!r} is no identity (email, linkedin_url, "
                             "external_ids.<system>)")
    return names


MatchOn = Annotated[
    Annotated[str, Field(strict=True)] | list[Annotated[str, Field(strict=True)]],
    AfterValidator(_match_on), WithJsonSchema(_MATCH_ON_SCHEMA),
]


class ContactUpsert(ContactFields):
    """Body of `POST /external/v1/contacts/upsert`, and one item of a batch upsert."""

    match_on: MatchOn
    source: Literal["linkedin", "csv", "crm", "api", "manual", "other"] | SkipJsonSchema[
        None
    ] = Field(default=None, description='Set when the upsert creates the contact (default '
              '"other"); ignored when it updates one.')

    def upsert(self) -> tuple[list[str], dict[str, Any]]:
        """Return the identities to match on that the item carries, in order, and the patch;
        or raise `ValidationFailed` when it carries none of them.

        A sync job names the same identities for every row, and many rows lack some (a
        LinkedIn connection without an email): those are tried by the ones they have.
        """
        patch = self.patch()
        named: list[str] = patch.pop("match_on")
        match_on = [n for n in named if match_value(n, patch) is not None]
        if not match_on:
            raise ValidationFailed({"match_on": f"names {', '.join(named)}, none of which the "
                                    "item carries (as a non-null value)"})
        return match_on, patch


class Contact(BaseModel):
    """A contact: the seed's fields, and `external_ids`."""

    id: str
    name: str
    email: str | None
    phone: str | None
    company: str | None
    position: str | None
    source: str
    linkedin_url: str | None
    tags: list[str]
    custom_fields: dict[str, JsonScalar]
    external_ids: dict[str, str]
    created_at: str
    updated_at: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class BatchItem(ContactUpdate):
    """One item of a batch update: the contact's id and the fields to change."""

    id: Annotated[str, Field(pattern=f"^{CONTACT_ID_PATTERN.pattern}$")]


_BATCH_ITEMS = {
    "description": "Each an object like BatchItem: `id` and the fields as in PUT. Items are "
    "checked one by one: an invalid item is refused in its result, the others are queued.",
}


class BatchRequest(BaseModel):
    """Body of `POST /external/v1/contacts/batch/update`."""

    model_config = ConfigDict(extra="forbid")

    updates: Annotated[
        list[BatchItem],
        Field(min_length=1, max_length=MAX_BATCH_ITEMS),
        WithJsonSchema({
            "type": "array", "minItems": 1, "maxItems": MAX_BATCH_ITEMS, "items": _BATCH_ITEMS
        }),
    ]


class UpsertBatchRequest(BaseModel):
    """Body of `POST /external/v1/contacts/batch/upsert`."""

    model_config = ConfigDict(extra="forbid")

    upserts: Annotated[
        list[ContactUpsert],
        Field(min_length=1, max_length=MAX_BATCH_ITEMS),
        WithJsonSchema({
            "type": "array", "minItems": 1, "maxItems": MAX_BATCH_ITEMS, "items": {
                "description": "Each an object like ContactUpsert. Items are checked one by "
                "one: an invalid item is refused in its result, the others are queued.",
            },
        }),
    ]


class BatchResult(BaseModel):
    index: int
    id: str | None = None
    update_id: str | None = None
    status: Literal["queued"] | None = None
    error: ErrorBody | None = None


class BatchResults(BaseModel):
    results: list[BatchResult]


class BatchEnvelope(BaseModel):
    success: Literal[True] = True
    data: BatchResults


class Pagination(BaseModel):
    page: int | None
    limit: int
    total: int
    total_pages: int
    next_cursor: str | None


class ContactList(BaseModel):
    contacts: list[Contact]
    pagination: Pagination


class ContactListEnvelope(BaseModel):
    success: Literal[True] = True
    data: ContactList


class DeletedEnvelope(BaseModel):
    success: Literal[True] = True
    message: str


class UpdateError(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | SkipJsonSchema[None] = Field(
        default=None,
        description="On `conflict`: `field` and `contact_id`, the contact that holds it.",
    )


class UpdateRecord(BaseModel):
    """What became of one accepted update."""

    update_id: str
    contact_id: str | None = Field(
        description="The contact updated; for an upsert, the one it found or made (null while "
        "queued)",
    )
    status: Literal["queued", "applied", "noop", "created", "conflict", "not_found", "failed"]
    received_at: str
    applied_at: str | None
    changed_fields: list[str]
    error: UpdateError | None


class ErrorEnvelope(BaseModel):
    success: Literal[False] = False
    error: ErrorBody


class ContactEnvelope(BaseModel):
    success: Literal[True] = True
    data: Contact


class UpdateRecordEnvelope(BaseModel):
    success: Literal[True] = True
    data: UpdateRecord


M = TypeVar("M", bound=ContactFields)


def _check_nulls(body: dict[str, Any], model: type[ContactFields]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for field in ("name", "tags", "custom_fields", "external_ids", "source"):
        if field in body and body[field] is None and field in model.model_fields:
            fields[field] = (
                "May not be null: a contact always has a name." if field == "name"
                else "May not be null: leave it out for the default." if field == "source"
                else "May not be null: send an empty array to clear the tags." if field == "tags"
                else "May not be null: set a key to null to remove it."
            )
    return fields


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


def parse_body(model: type[M], body: Any, *, plain: bool = False) -> M:
    """Validate a decoded JSON body, or raise `ValidationFailed` naming each bad field.

    `plain`: the body's text was ASCII without `\\u` escapes, so no string in it can be
    outside NFC or hold NUL, and neither is looked for (two walks of the body, a fifth of
    what the busiest route spends validating).
    """
    if not isinstance(body, dict):
        raise ValidationFailed({"_body": "The body must be a JSON object."})
    if not plain:
        body = nfc(body)
        # PostgreSQL text cannot hold NUL, and no contact field has a use for it.
        nul_errors = {
            str(k): "may not contain the NUL character" for k, v in body.items() if _has_nul(v)
        }
        if nul_errors:
            raise ValidationFailed(nul_errors)
    null_errors = _check_nulls(body, model)
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        messages = body_messages(exc.errors(include_url=False), body)
        raise ValidationFailed({**messages, **null_errors}) from None
    if null_errors:
        raise ValidationFailed(null_errors)
    return parsed
