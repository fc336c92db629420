"""Unicode normal form C for every string of a request body (DESIGN §2)."""

from __future__ import annotations

import unicodedata
from typing import Any

from contactsync.errors import ValidationFailed


def nfc(value: Any, field: str | None = None) -> Any:
    """Return `value` with every string (and object key) in Unicode normal form C.

    Before validation, so that lengths count characters as stored and duplicate tags are
    dropped after normalisation. Trimming (pydantic's, after) commutes with NFC: no
    composition starts or ends with whitespace or makes any.
    """
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [nfc(v, field) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = nfc(key)
            if name in out:
                where = field or name
                raise ValidationFailed({where: (
                    f"the key {name[:80]!r} is sent twice, in two Unicode forms of one text"
                    if field else "This field is sent twice, in two Unicode forms of one text."
                )})
            out[name] = nfc(item, field or name)
        return out
    return value
