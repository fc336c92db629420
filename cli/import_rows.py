"""Turn an import file (CSV or JSON lines) into batch-update items, one per row; no I/O but reading.

CSV: an `id` column plus field columns (`name`, `email`, `phone`, `company`, `position`,
`linkedin_url`), `tags` as one `;`-separated cell, `custom.<key>` columns into `custom_fields`,
and LinkedIn's connections-export headers mapped onto those fields. A `json:` column holds
one JSON value a cell (`json:tags`, `json:custom.<key>`, `json:<field>`): how `contactsync
export` writes what a plain cell cannot carry (numbers, booleans, padded strings, tags with `;`).
An empty cell is not sent, so it never clears a field. JSON lines: each line one batch item,
exactly as the API takes it. In both, `created_at`, `updated_at` and `source` (what an export
carries and an update cannot change) are read and left out, so an export imports back as is.
`external_ids.<system>` columns go into `external_ids`.

Upserting (`--match`, or a recognised export: cli/import_exports.py), no `id` is needed and
one is left out, and `source` is kept (it names where a created contact came from).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cli.import_exports import EXTERNAL_PREFIX, Export, MatchError, parse_match, recognise

Format = Literal["csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl")
CUSTOM_PREFIX = "custom."
JSON_PREFIX = "json:"
TAG_SEPARATOR = ";"
ROW_ERROR = "INVALID_ROW"

_FIELDS = ("id", "name", "email", "phone", "company", "position", "linkedin_url", "tags")
# LinkedIn's Connections.csv headers, matched case-insensitively like every header.
_LINKEDIN = {
    "url": "linkedin_url",
    "email address": "email",
    "company": "company",
    "position": "position",
}
_NAME_PARTS = ("first name", "last name")
# Columns of the LinkedIn export that have no field of their own: read and left out.
_IGNORED = frozenset({"connected on"})
# The contact's own fields that an update cannot set: an export carries them, an import leaves
# them out (the contact keeps its source and times).
READ_ONLY = frozenset({"created_at", "updated_at", "source"})
# An upsert finds its contact by identity, so an `id` is left out; `source` goes, for a create.
UPSERT_READ_ONLY = frozenset({"created_at", "updated_at", "id"})
_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (unknown format, bad header)."""


@dataclass(frozen=True)
class Row:
    """One update to send: the batch item and the line it starts on."""

    line: int
    update: dict[str, Any]


@dataclass(frozen=True)
class RowError:
    """A row that cannot become an update, with why."""

    line: int
    id: str | None
    message: str
    fields: dict[str, str] = field(default_factory=dict)

    def error(self) -> dict[str, Any]:
        """Return the error in the API's shape."""
        details = {"fields": self.fields} if self.fields else {}
        return {"code": ROW_ERROR, "message": self.message, "details": details}


Item = Row | RowError


def detect_format(path: Path, explicit: str | None = None) -> Format:
    """Return the format named, or the one the file's extension implies."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise ImportFileError(f"unknown format {explicit!r}: use csv or jsonl")
        return explicit
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise ImportFileError(
            f"cannot tell the format of {path.name!r} from its extension: pass --format csv|jsonl"
        )
    return found


def read_items(path: Path, fmt: Format, upsert: bool = False) -> Iterator[Item]:
    """Yield each row of the file as an update (or upsert) or a row error, in file order."""
    # utf-8-sig: spreadsheets often write a byte-order mark before the header.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            yield from (parse_csv(handle, upsert) if fmt == "csv"
                        else parse_jsonl(handle, upsert))
        except UnicodeDecodeError:
            raise ImportFileError(
                f"{path.name} is not UTF-8 text: save it as UTF-8 and run again"
            ) from None


@dataclass(frozen=True)
class _Header:
    """Where each column of a CSV file goes."""

    width: int
    id_index: int | None  # None when rows are upserted by identity
    columns: dict[int, str]  # index -> field, "custom.<key>" or "external_ids.<system>",
    # each maybe after "json:"
    name_parts: tuple[int, ...]  # First Name / Last Name, joined into `name`
    export: Export | None = None
    dropped: tuple[str, ...] = ()  # a recognised export's columns we have no place for


@dataclass(frozen=True)
class Layout:
    """What a file's header decided: the export it is, if any, and the columns left out."""

    export: Export | None
    dropped: tuple[str, ...]


def _target(index: int, label: str, any_field: bool = False) -> str | None:
    """Return where a column goes ("json:" kept), or None for a column read and left out.

    A `json:` column may name a field this importer does not know (one the API gained since):
    its values go as they are, and the API judges them, as it does a JSON line's.
    """
    lowered = label.lower()
    if lowered.startswith(JSON_PREFIX):
        inner = _target(index, label[len(JSON_PREFIX):].strip(), any_field=True)
        if inner == "id":
            raise ImportFileError(f"column {index + 1}: the id column is plain text, not JSON")
        return inner and JSON_PREFIX + inner
    if lowered.startswith(CUSTOM_PREFIX):
        key = label[len(CUSTOM_PREFIX):]
        if not key:
            raise ImportFileError(f"column {index + 1}: 'custom.' needs a key after the dot")
        return CUSTOM_PREFIX + key
    if lowered.startswith(EXTERNAL_PREFIX):
        try:
            parse_match(lowered)
        except MatchError:
            raise ImportFileError(
                f"column {index + 1}: {label!r} needs a system of 1 to 32 of a-z, 0-9, _"
            ) from None
        return lowered
    if lowered in _FIELDS or lowered in READ_ONLY:
        return lowered
    if lowered in _LINKEDIN:
        return _LINKEDIN[lowered]
    if lowered in _IGNORED:
        return None
    if any_field and label:
        return label
    known = ", ".join(_FIELDS)
    raise ImportFileError(
        f"unknown column {label!r}: use {known}, custom.<key>, external_ids.<system>, "
        "json:<column>, or LinkedIn's headers"
    )


def _ours(lowered: str) -> bool:
    """Say whether a column of a recognised export is named in our own format."""
    prefixes = (CUSTOM_PREFIX, JSON_PREFIX, EXTERNAL_PREFIX)
    return lowered.startswith(prefixes) or (lowered in _FIELDS and lowered != "id")


def _map_header(cells: list[str], upsert: bool = False) -> _Header:
    export = recognise({c.strip().lower() for c in cells} - {""})
    upsert = upsert or export is not None
    columns: dict[int, str] = {}
    name_parts: list[tuple[int, int]] = []  # (place in the name, column)
    dropped: list[str] = []
    own: list[tuple[int, str]] = []  # a recognised export's columns named in our format
    for index, raw in enumerate(cells):
        label = raw.strip()
        lowered = label.lower()
        if export is not None:
            place = export.name_index(lowered)
            if place is not None:
                name_parts.append((place, index))
            elif lowered in export.columns:
                columns[index] = export.columns[lowered]
            elif _ours(lowered):
                own.append((index, label))
            elif label and lowered not in export.ignored:
                # Whatever else an export carries (owners, stages, dates) has no field here.
                dropped.append(label)
            continue
        if lowered in _NAME_PARTS:
            name_parts.append((_NAME_PARTS.index(lowered), index))
            continue
        target = _target(index, label)
        left_out = UPSERT_READ_ONLY if upsert else READ_ONLY
        if target is not None and target.removeprefix(JSON_PREFIX) not in left_out:
            columns[index] = target
    taken = {t.removeprefix(JSON_PREFIX) for t in columns.values()}
    taken |= {"name"} if name_parts else set()
    for index, label in own:
        target = _target(index, label) or label  # never None: no such column is ignored
        if target.removeprefix(JSON_PREFIX) in taken:
            dropped.append(label)  # e.g. Salesforce's `Name` beside `FirstName` and `LastName`
        else:
            columns[index] = target
    targets = [t.removeprefix(JSON_PREFIX) for t in columns.values()]
    targets += ["name"] if name_parts else []
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise ImportFileError(f"more than one column gives {repeated[0]!r}")
    id_index = next((i for i, target in columns.items() if target == "id"), None)
    if id_index is None and not upsert:
        raise ImportFileError(
            "the file has no 'id' column: each row must name the contact it updates, "
            "or pass --match to upsert by identity"
        )
    if id_index is not None:
        del columns[id_index]
    parts = tuple(index for _, index in sorted(name_parts))
    return _Header(len(cells), id_index, columns, parts, export, tuple(dropped))


def _skip_preamble(records: Iterator[tuple[int, list[str]]]) -> tuple[int, list[str]] | None:
    """Return the header record, past blank lines and LinkedIn's "Notes:" preamble."""
    in_notes = False
    for line, cells in records:
        labels = {c.strip().lower() for c in cells} - {""}
        if not labels:
            continue
        if cells[0].strip().lower() == "notes:":
            in_notes = True
        elif not in_notes or labels & {"id", "first name"}:
            return line, cells
    return None


def _records(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(lines)
    start = 1
    for cells in reader:
        yield start, cells
        start = reader.line_num + 1


def layout_of(path: Path, fmt: Format, upsert: bool = False) -> Layout:
    """Read a file's header (a CSV's; JSON lines have none) and say what it is."""
    if fmt == "jsonl":
        return Layout(None, ())
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            header = _read_header(_records(handle), upsert)
        except UnicodeDecodeError:
            raise ImportFileError(
                f"{path.name} is not UTF-8 text: save it as UTF-8 and run again"
            ) from None
        except csv.Error as exc:
            raise ImportFileError(f"not readable as CSV: {exc}") from None
    return Layout(header.export, header.dropped)


def _read_header(records: Iterator[tuple[int, list[str]]], upsert: bool) -> _Header:
    found = _skip_preamble(records)
    if found is None:
        raise ImportFileError("the file is empty: no header row")
    return _map_header(found[1], upsert)


def parse_csv(lines: Iterable[str], upsert: bool = False) -> Iterator[Item]:
    """Yield each CSV record after the header as an update (or upsert) or a row error."""
    records = _records(lines)
    try:
        header = _read_header(records, upsert)
        for line, cells in records:
            if any(c.strip() for c in cells):
                yield _csv_row(header, line, cells)
    except csv.Error as exc:
        raise ImportFileError(f"not readable as CSV: {exc}") from None


def _csv_row(header: _Header, line: int, cells: list[str]) -> Item:
    at = header.id_index
    contact_id = (cells[at].strip() if at is not None and at < len(cells) else "") or None
    if len(cells) != header.width:
        return RowError(line, contact_id,
                        f"the row has {len(cells)} cells, the header {header.width}")
    if at is not None and contact_id is None:
        return RowError(line, None, "the row has no id", {"id": "A contact id is required."})
    update: dict[str, Any] = {} if contact_id is None else {"id": contact_id}
    custom: dict[str, Any] = {}
    external: dict[str, Any] = {}
    for index, target in header.columns.items():
        value: Any = cells[index].strip()
        if not value:
            continue  # an empty cell is not sent: it never clears a field
        if target.startswith(JSON_PREFIX):
            target = target[len(JSON_PREFIX):]
            try:
                value = json.loads(value, parse_constant=_no_constant)
            except ValueError:
                return RowError(line, contact_id, f"column {index + 1} is not a JSON value",
                                {target: "Not valid JSON."})
        elif target == "tags":
            value = split_tags(value)
        if target == "custom_fields":  # keys a header cannot name (export_csv.py)
            if not isinstance(value, dict):
                return RowError(line, contact_id, f"column {index + 1} is not a JSON object",
                                {target: "Must be a JSON object."})
            custom.update(value)
        elif target.startswith(CUSTOM_PREFIX):
            custom[target[len(CUSTOM_PREFIX):]] = value
        elif target.startswith(EXTERNAL_PREFIX):
            external[target[len(EXTERNAL_PREFIX):]] = value
        else:
            update[target] = value
    name = " ".join(p for p in (cells[i].strip() for i in header.name_parts) if p)
    if name:
        update["name"] = name
    if custom:
        update["custom_fields"] = custom
    if external:
        given = update.get("external_ids")
        update["external_ids"] = {**(given if isinstance(given, dict) else {}), **external}
    return Row(line, update)


def split_tags(cell: str) -> list[str]:
    """Split a `;`-separated tags cell into trimmed, non-empty tags."""
    return [tag.strip() for tag in cell.split(TAG_SEPARATOR) if tag.strip()]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_jsonl(lines: Iterable[str], upsert: bool = False) -> Iterator[Item]:
    """Yield each non-blank line, a JSON object (with an `id` unless upserting), as an item."""
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            yield RowError(line, None, f"not valid JSON: {exc}", {"_body": "Not valid JSON."})
            continue
        if not isinstance(value, dict):
            yield RowError(line, None, "the line is not a JSON object",
                           {"_body": "Each line must be a JSON object."})
            continue
        if upsert:
            yield Row(line, {k: v for k, v in value.items() if k not in UPSERT_READ_ONLY})
            continue
        contact_id = value.get("id")
        if not isinstance(contact_id, str) or not contact_id.strip():
            yield RowError(line, None, "the row has no id", {"id": "A contact id is required."})
            continue
        yield Row(line, {k: v for k, v in value.items() if k not in READ_ONLY})


def identity_value(item: dict[str, Any], identity: str) -> Any:
    """Return the value an item gives an identity (`external_ids.hubspot` looks inside)."""
    if identity.startswith(EXTERNAL_PREFIX):
        external = item.get("external_ids")
        return external.get(identity[len(EXTERNAL_PREFIX):]) if isinstance(external, dict) else None
    return item.get(identity)


def upsert_item(row: Row, match: tuple[str, ...], source: str | None) -> Row | RowError:
    """Return a row as a batch-upsert item, or a row error when it has none of `match`.

    A line of JSON that names its own `match_on` keeps it.
    """
    item = dict(row.update)
    item.setdefault("match_on", list(match))
    if source is not None:
        item.setdefault("source", source)
    named = item["match_on"] if isinstance(item["match_on"], list) else [item["match_on"]]
    if not any(isinstance(n, str) and identity_value(item, n) not in (None, "") for n in named):
        wanted = ", ".join(str(n) for n in named)
        return RowError(row.line, None, f"the row has none of the identities it is matched on "
                        f"({wanted})", {"match_on": f"No value for {wanted}."})
    return Row(row.line, item)
