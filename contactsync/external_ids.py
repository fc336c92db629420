"""The `external_ids` field of a body: its validation rules and its JSON Schema."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StringConstraints, WithJsonSchema

from contactsync.identities import EXTERNAL_SYSTEM, MAX_EXTERNAL_ID_LENGTH, MAX_EXTERNAL_SYSTEMS

# Ids are compared exactly (DESIGN §2), so neither they nor the systems are trimmed.
_Verbatim = Annotated[str, StringConstraints(strip_whitespace=False)]


def _external_ids(values: dict[str, str | None]) -> dict[str, str | None]:
    if len(values) > MAX_EXTERNAL_SYSTEMS:
        raise ValueError(f"must hold at most {MAX_EXTERNAL_SYSTEMS} systems")
    for system, external_id in values.items():
        if not EXTERNAL_SYSTEM.fullmatch(system):
            raise ValueError(
                f"system {system[:80]!r} must be 1 to 32 lowercase letters, digits or _"
            )
        if external_id is not None and not 1 <= len(external_id) <= MAX_EXTERNAL_ID_LENGTH:
            raise ValueError(
                f"the id of {system!r} must be 1 to {MAX_EXTERNAL_ID_LENGTH} characters"
            )
    return values


_EXTERNAL_IDS_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_EXTERNAL_SYSTEMS,
    "propertyNames": {"pattern": f"^{EXTERNAL_SYSTEM.pattern}$"},
    "additionalProperties": {"anyOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_EXTERNAL_ID_LENGTH,
         "pattern": "^[^\\u0000]*$"},
        {"type": "null"},
    ]},
    "description": "The contact's ids in other systems (`{\"hubspot\": \"51\"}`), each "
    "unique within the account: merged system by system; a system set to null is removed. "
    f"At most {MAX_EXTERNAL_SYSTEMS} systems on a contact.",
}
ExternalIds = Annotated[
    dict[_Verbatim, _Verbatim | None],
    AfterValidator(_external_ids),
    WithJsonSchema(_EXTERNAL_IDS_SCHEMA),
]
