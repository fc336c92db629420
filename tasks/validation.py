"""Bad messages: what the apply task checks before it trusts a task message or a stored body.

The gateway only queues what it validated, so these checks meet only corruption, version skew
or a hand-pushed message. Each refusal is logged once with its reason (ids and field names,
never values) and never retried: retrying cannot fix a malformed message.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

import orjson

from contactsync import names
from contactsync.schemas import SOURCES, STRING_FIELDS
from contactsync.timeutil import isoformat, parse_iso, utcnow
from contactsync.updates import AcceptedUpdate
from contactsync.upserts import match_keys

log = logging.getLogger("contactsync.worker")

# Full matches, each bounded by its column: an id that fits no row could never be recorded.
# Ids that only older gateways or tests make (`cnt_x`) still pass: they end `not_found`.
UPDATE_ID = re.compile(r"upd_[A-Za-z0-9]{1,36}")
ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
STORED_CONTACT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SEQ = 2**63 - 1  # BIGINT
MAX_IDS_PER_MESSAGE = 10_000
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "update_id": str, "account_id": str, "contact_id": str, "seq": int, "received_at": str,
    "patch": dict, "queue": str, "reply_to": (str, type(None)), "match_on": (list, type(None)),
}
_OPTIONAL = ("reply_to", "match_on")
_QUEUES = (names.UPDATES_QUEUE, names.BULK_QUEUE)
_SCALARS = (str, int, float, bool, type(None))


class BadMessage(ValueError):
    """A message or stored body that cannot be applied; its text is safe to log."""


class RefusedPatch(BadMessage):
    """A stored body naming its update and account well, that this worker cannot apply.

    A patch from a newer gateway, or a contact id no contact can have: the update can still be
    recorded `failed` and parked, to be replayed once a worker that knows the patch runs.
    """

    def __init__(self, reason: str, update: AcceptedUpdate) -> None:
        super().__init__(reason)
        self.update = update


def checked_update_ids(update_ids: object) -> list[str]:
    """Return the well-formed update ids of a task's argument; log what is refused."""
    if not isinstance(update_ids, list):
        log.error("rejected task message: its argument is a %s, not a list of update ids",
                  type(update_ids).__name__)
        return []
    if len(update_ids) > MAX_IDS_PER_MESSAGE:
        log.error("rejected task message: %d update ids, at most %d", len(update_ids),
                  MAX_IDS_PER_MESSAGE)
        return []
    good = [i for i in update_ids if isinstance(i, str) and UPDATE_ID.fullmatch(i)]
    if len(good) < len(update_ids):
        log.error("rejected %d malformed update ids in a task message",
                  len(update_ids) - len(good))
    return good


def parse_stored_update(raw: bytes | str) -> AcceptedUpdate:
    """Return the stored body of an accepted update, or raise `BadMessage` saying why."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadMessage("the stored body is not JSON") from None
    if not isinstance(data, dict):
        raise BadMessage("the stored body is not an object")
    for name, kind in _FIELDS.items():
        if name not in data and name not in _OPTIONAL:
            raise BadMessage(f"the stored body has no {name!r}")
        if name in data and (not isinstance(data[name], kind) or isinstance(data[name], bool)):
            raise BadMessage(f"the stored body's {name!r} has the wrong type")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise BadMessage(f"the stored body has unknown fields ({', '.join(unknown[:5])})")
    if not UPDATE_ID.fullmatch(data["update_id"]) or not ACCOUNT_ID.fullmatch(data["account_id"]):
        raise BadMessage("the stored body's ids are malformed")
    if data["queue"] not in _QUEUES:
        raise BadMessage("the stored body names an unknown queue")
    update = AcceptedUpdate(**data)
    try:
        if not STORED_CONTACT_ID.fullmatch(data["contact_id"]):
            raise BadMessage("the stored body's contact id is malformed")
        _check_patch(data["patch"], upsert=update.match_on is not None)
        if update.match_on is not None:
            _check_match_on(update.match_on, data["patch"])
    except BadMessage as exc:
        raise RefusedPatch(str(exc), update) from None
    return update


def _check_patch(patch: dict[str, Any], *, upsert: bool = False) -> None:
    for field, value in patch.items():
        if field in STRING_FIELDS:
            ok = isinstance(value, str) or (value is None and field != "name")
        elif field == "tags":
            ok = isinstance(value, list) and all(isinstance(t, str) for t in value)
        elif field == "custom_fields":
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, _SCALARS) for k, v in value.items()
            )
        elif field == "source" and upsert:  # for the contact it may create
            ok = value in SOURCES
        elif field == "external_ids":
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str | None) for k, v in value.items()
            )
        else:
            raise BadMessage(f"the patch has an unknown field ({field[:64]!r})")
        if not ok:
            raise BadMessage(f"the patch's {field!r} has the wrong type")


def _check_match_on(match_on: list[Any], patch: dict[str, Any]) -> None:
    if not match_on or not all(isinstance(name, str) for name in match_on):
        raise BadMessage("the upsert's match_on is not a list of identity names")
    if len(match_keys(match_on, patch)) != len(match_on):
        raise BadMessage("the upsert's match_on names an identity its patch does not carry")


def storable(update: AcceptedUpdate) -> AcceptedUpdate:
    """Return `update` with every value its record keeps in a typed column made to fit one.

    For an update whose own values the database refuses (a contact id too long, a sequence past
    BIGINT): it is still recorded `failed`, under its id and account, which always fit.
    """
    try:
        parse_iso(update.received_at)
        received_at = update.received_at
    except ValueError:
        received_at = isoformat(utcnow())
    return replace(
        update,
        contact_id=update.contact_id if STORED_CONTACT_ID.fullmatch(update.contact_id) else "",
        seq=update.seq if 0 <= update.seq <= MAX_SEQ else 0,
        received_at=received_at,
    )
