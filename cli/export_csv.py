"""How `contactsync export` lays contacts out as CSV, so that `import` reads back every value.

Columns are the importer's: the fields, `tags` as one `;`-separated cell, one `custom.<key>`
column per custom field key. A value a plain cell cannot carry exactly (a number or boolean,
a string with surrounding spaces or empty, a tag holding `;`, an object such as a field added
to the API later) puts its whole column in JSON, named `json:<column>`, one JSON value a cell.
Custom keys with surrounding spaces, which a (trimmed) header cannot name, share one
`json:custom_fields` column of objects.
The header depends on every contact, so the contacts are read once to plan and once to write.
"""

from __future__ import annotations

import json
from typing import Any

from cli.import_rows import CUSTOM_PREFIX, JSON_PREFIX, TAG_SEPARATOR

# The contact shape's fields, in column order. A field not listed here (one the API gains
# later) is written after these, in the order it first appears: add it here to place it.
FIELD_COLUMNS = (
    "id", "name", "email", "phone", "company", "position", "linkedin_url", "source", "tags",
    "created_at", "updated_at",
)
_CUSTOM = "custom_fields"


def _plain_text(value: Any) -> bool:
    # The importer trims each cell and skips an empty one.
    return value is None or (isinstance(value, str) and value != "" and value == value.strip())


def _plain_tags(tags: Any) -> bool:
    return isinstance(tags, list) and all(
        _plain_text(t) and t is not None and TAG_SEPARATOR not in t for t in tags
    )


class CsvLayout:
    """The columns of an export: fed every contact with `plan`, then writes rows."""

    def __init__(self) -> None:
        self._fields: dict[str, bool] = {}  # field -> its column is JSON
        self._custom: dict[str, bool] = {}  # custom key -> its column is JSON
        self._odd_keys = False  # custom keys with surrounding spaces: `json:custom_fields`

    def plan(self, contact: dict[str, Any]) -> None:
        """Widen the layout to hold `contact` exactly."""
        for name, value in contact.items():
            if name == _CUSTOM and isinstance(value, dict):
                for key, item in value.items():
                    if key != key.strip():
                        self._odd_keys = True  # a header is trimmed: the key would change
                    else:
                        self._custom[key] = self._custom.get(key, False) or not _plain_text(item)
            else:
                plain = _plain_tags(value) if name == "tags" else _plain_text(value)
                self._fields[name] = self._fields.get(name, False) or not plain

    def _field_order(self) -> list[str]:
        known = [f for f in FIELD_COLUMNS if f in self._fields]
        return known + [f for f in self._fields if f not in FIELD_COLUMNS]

    def header(self) -> list[str]:
        """Return the header row."""
        columns = [(JSON_PREFIX if self._fields[f] else "") + f for f in self._field_order()]
        columns += [(JSON_PREFIX if self._custom[k] else "") + CUSTOM_PREFIX + k
                    for k in sorted(self._custom)]
        return columns + ([JSON_PREFIX + _CUSTOM] if self._odd_keys else [])

    def row(self, contact: dict[str, Any]) -> list[str]:
        """Return the cells of one contact, in the header's order."""
        cells = [self._cell(contact.get(f), self._fields[f], f == "tags")
                 for f in self._field_order()]
        custom = contact.get(_CUSTOM) or {}
        cells += [self._cell(custom.get(k), self._custom[k], False) for k in sorted(self._custom)]
        if self._odd_keys:
            odd = {k: v for k, v in custom.items() if k != k.strip()}
            cells.append(self._cell(odd or None, True, False))
        return cells

    @staticmethod
    def _cell(value: Any, as_json: bool, tags: bool) -> str:
        if value is None:
            return ""
        if as_json:
            return json.dumps(value, ensure_ascii=False)
        if tags:
            return TAG_SEPARATOR.join(value)
        return str(value)
