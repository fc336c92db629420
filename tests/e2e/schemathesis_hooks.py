"""Schemathesis hooks for the fuzz run (SCHEMATHESIS_HOOKS=tests.e2e.schemathesis_hooks).

They give generated requests what no schema can: ids and a cursor that exist. Valid requests
only; an invalid one is sent as generated.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from typing import Any

import schemathesis

from contactsync.schemas import SPECIAL_USE_DOMAINS

_CONTACTS = [c for c in os.environ.get("CONTACTSYNC_FUZZ_CONTACTS", "").split(",") if c]
_UPDATES = [u for u in os.environ.get("CONTACTSYNC_FUZZ_UPDATES", "").split(",") if u]
_CURSOR = os.environ.get("CONTACTSYNC_FUZZ_CURSOR", "")
_IDEMPOTENCY_KEY = re.compile(r"^[!-~]([ -~]*[!-~])?$")
# A public address, accepted without DNS: a generated host is rightly refused when it does not
# resolve to a public address (no schema can say "resolves").
_WEBHOOK_URL = "https://93.184.216.34/hook"


def _positive(case: schemathesis.Case) -> bool:
    meta = case.meta
    return meta is None or meta.generation.mode.is_positive


def _linked(case: schemathesis.Case) -> bool:
    """Tell whether the stateful phase chose this case's ids from an earlier response."""
    meta = case.meta
    return meta is not None and "stateful" in str(meta.phase.name).lower()


def _fit_upsert(item: dict[str, Any]) -> None:
    """Make a valid upsert one the service can apply: it carries every identity it names (no
    schema says "the value of each name in match_on"), and a name in case it creates."""
    item.setdefault("name", "Fuzzed")
    names = item.get("match_on")
    names = [names] if isinstance(names, str) else names if isinstance(names, list) else []
    external = item.get("external_ids")
    carried = [
        n for n in names
        if (n in ("email", "linkedin_url") and isinstance(item.get(n), str))
        or (n.startswith("external_ids.") and isinstance(external, dict)
            and isinstance(external.get(n.removeprefix("external_ids.")), str))
    ]
    if carried:
        item["match_on"] = carried
    else:
        item["match_on"] = "email"
        item["email"] = f"fuzz-{uuid.uuid4().hex}@example.com"


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    """Aim half the valid requests at real contacts and updates; keep cursors and keys real."""
    if not _positive(case):
        return
    path = case.path_parameters
    for name, known in (("contact_id", _CONTACTS), ("update_id", _UPDATES)):
        if path and name in path and known and not _linked(case) and random.random() < 0.5:
            path[name] = random.choice(known)
    query = case.query
    if query and "cursor" in query and _CURSOR:
        # A cursor is opaque: one the service did not make is rightly a 400.
        query["cursor"] = _CURSOR
        query["sort_by"] = "created_at"
    body = case.body
    if case.path.startswith("/external/v1/webhooks") and isinstance(body, dict) and isinstance(
        body.get("url"), str
    ):
        body["url"] = _WEBHOOK_URL
    if case.path.endswith("/contacts/upsert") and isinstance(body, dict):
        _fit_upsert(body)
    elif case.path.endswith("/batch/upsert") and isinstance(body, dict):
        for item in body.get("upserts") or []:
            if isinstance(item, dict):
                _fit_upsert(item)
    email = body.get("email") if isinstance(body, dict) else None
    if isinstance(email, str) and email.lower().rstrip(".").rsplit(".", 1)[-1].rsplit(
        "@", 1
    )[-1] in SPECIAL_USE_DOMAINS:
        # Documented in the schema's words; JSON Schema itself cannot say "not .test".
        body["email"] = email.rstrip(".") + ".com"
    headers = case.headers
    for name, value in list((headers or {}).items()):
        valid = isinstance(value, str) and len(value) <= 255 and _IDEMPOTENCY_KEY.match(value)
        if name.lower() == "idempotency-key" and valid:
            # The same key with another body is rightly a 422: keep keys unique.
            headers[name] = f"{value[:200]}-{uuid.uuid4().hex}"
