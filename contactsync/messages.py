"""Validation messages in plain words about the client's input, never pydantic's internals.

pydantic's own texts name its types (`function-after[_tags(), list[constrained-str]]`,
`Input should be a valid string`); each error type it raises for a body is written here again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_core import ErrorDetails

_BY_TYPE = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this body",
    "string_type": "must be a string",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "none_required": "must be null",
    "string_pattern_mismatch": "is not in the expected form",
    "datetime_type": "must be a date and time (RFC 3339)",
    "datetime_parsing": "must be a date and time (RFC 3339)",
    "datetime_from_date_parsing": "must be a date and time (RFC 3339)",
}
_BOUNDS = {
    "string_too_short": ("must be at least {} characters", "min_length"),
    "string_too_long": ("must be at most {} characters", "max_length"),
    "too_short": ("must hold at least {} items", "min_length"),
    "too_long": ("must hold at most {} items", "max_length"),
    "greater_than_equal": ("must be at least {}", "ge"),
    "greater_than": ("must be more than {}", "gt"),
    "less_than_equal": ("must be at most {}", "le"),
    "less_than": ("must be less than {}", "lt"),
}


def plain(error: ErrorDetails) -> str:
    """Return what was wrong with one input, in words that name no library type."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind == "value_error":  # our own validators' texts, written for clients
        return str(ctx.get("error", "is not valid"))
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "may not be empty"
    if kind in _BOUNDS:
        text, key = _BOUNDS[kind]
        bound = ctx.get(key, "")
        return text.format(int(bound) if isinstance(bound, float) and bound.is_integer() else bound)
    if kind in ("literal_error", "enum"):
        return f"must be {ctx.get('expected', 'one of the documented values')}"
    return _BY_TYPE.get(kind, "is not valid")


def body_messages(errors: Sequence[ErrorDetails], body: dict[str, Any]) -> dict[str, str]:
    """Return one message per top-level field of a body, from pydantic's errors for it.

    A field that may be null reports its non-null branch's error only (`none` in its location
    is the other branch of the union); a custom field value reports why no JSON type fit.
    """
    by_field: dict[str, list[ErrorDetails]] = {}
    for error in errors:
        loc = error["loc"]
        by_field.setdefault(str(loc[0]) if loc else "_body", []).append(error)
    messages: dict[str, str] = {}
    for field, found in by_field.items():
        kept = [e for e in found if "none" not in e["loc"][1:2]] or found
        messages[field] = _field_message(field, kept, body)
    return messages


def _field_message(field: str, errors: list[ErrorDetails], body: dict[str, Any]) -> str:
    first = errors[0]
    if first["type"] == "extra_forbidden":
        return "Unknown field."
    if first["type"] == "missing":
        return "Required."
    if body.get(field, 0) is None:
        return "May not be null."
    loc = first["loc"]
    # Our list and dict types sit inside one validator: loc is (field, <its tag>, index or key,
    # <member tag>...). Only tags and custom_fields nest.
    if field == "tags" and len(loc) > 2 and isinstance(loc[2], int):
        return f"item {loc[2]} {plain(first)}"
    if field == "custom_fields" and len(loc) > 2:
        key = str(loc[2])
        for error in errors:
            ctx: dict[str, Any] = dict(error.get("ctx") or {})
            bound = ctx.get("le", ctx.get("ge"))
            if error["type"] in ("less_than_equal", "greater_than_equal") and bound is not None:
                return f"the value of {key[:80]!r} must be within ±{abs(int(bound))}"
        return f"the value of {key[:80]!r} must be a string, number, boolean or null"
    return plain(first)
