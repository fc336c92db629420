"""Write many rows in one statement.

On PostgreSQL the rows travel as one JSON array, which `json_to_recordset` turns back into
rows on the server: one statement and one parameter however many rows, where `executemany`
sends, binds and runs a statement per row (most of a batch's client time, and much of the
server's). Elsewhere (SQLite, in process and fast at small statements) it is `executemany`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, Table, TextClause, bindparam, insert, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import Insert, Update

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def _quote(name: str) -> str:
    return _PG.identifier_preparer.quote(name)


def _typed(table: Table, columns: dict[str, str]) -> str:
    """Each JSON key with the type of the column it stands for: `"key" VARCHAR(32), ...`."""
    return ", ".join(
        f"{_quote(key)} {table.c[column].type.compile(dialect=_PG)}"
        for key, column in columns.items()
    )


def recordset(table: Table, columns: dict[str, str], param: str) -> str:
    """Return the FROM item that reads JSON parameter `param` (an array of objects) as rows
    `r`, each key typed as its column (`columns`: key to column) and numbered `row_number`."""
    names = ", ".join(_quote(key) for key in columns)
    return (
        f"ROWS FROM (json_to_recordset(CAST(:{param} AS json)) AS ({_typed(table, columns)})) "
        f"WITH ORDINALITY AS r({names}, row_number)"
    )


def _rows_json(rows: Sequence[dict[str, Any]]) -> str:
    # orjson writes aware datetimes as RFC 3339 with their offset, which timestamptz reads.
    return orjson.dumps(rows).decode()


class _RowStatement:
    """One statement for many rows: the JSON-array form on PostgreSQL, else executemany."""

    _postgres: TextClause
    _portable: Insert | Update

    def run(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        if connection.dialect.name == "postgresql":
            connection.execute(self._postgres, {"rows": _rows_json(rows)})
        else:
            connection.execute(self._portable, list(rows))


class RowInsert(_RowStatement):
    """INSERT of many rows, each a dict with every one of `columns`."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        names = ", ".join(_quote(c) for c in columns)
        typed = _typed(table, {c: c for c in columns})
        # In the list's order, so that serial ids (the outbox's) follow it as executemany's do.
        self._postgres = text(
            f"INSERT INTO {_quote(table.name)} ({names}) SELECT {names} "
            f"FROM ROWS FROM (json_to_recordset(CAST(:rows AS json)) AS ({typed})) "
            f"WITH ORDINALITY AS r({names}, row_number) ORDER BY row_number"
        )
        self._portable = insert(table)


class RowUpdate(_RowStatement):
    """UPDATE of many rows by primary key: each row a dict with `key` (the row's id, under
    that name) and every one of `columns`."""

    def __init__(self, table: Table, id_column: str, key: str, columns: Sequence[str]) -> None:
        typed = _typed(table, {key: id_column, **{c: c for c in columns}})
        assignments = ", ".join(f"{_quote(c)} = r.{_quote(c)}" for c in columns)
        name = _quote(table.name)
        self._postgres = text(
            f"UPDATE {name} SET {assignments} "
            f"FROM json_to_recordset(CAST(:rows AS json)) AS r({typed}) "
            f"WHERE {name}.{_quote(id_column)} = r.{_quote(key)}"
        )
        self._portable = (
            update(table).where(table.c[id_column] == bindparam(key))
            .values({c: bindparam(c) for c in columns})
        )
