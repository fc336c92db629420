"""A batch's two PostgreSQL round trips: one that locks its contacts and reads what the merge
needs, one statement that writes everything the merge decided.

The merge itself stays the pure function (`contactsync/merge.py`), run by `batch_apply` between
the two. A lone update used to pay nine round trips (a ping, BEGIN, the lock, the record
look-up, the identities, three writes, COMMIT); it pays two now, the first carrying the BEGIN
(`_begins_here`), the second the COMMIT (`Database.write_with_commit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Table, TextClause, text
from sqlalchemy.orm import Session

from contactsync.db import Database, driver_error
from contactsync.models import Contact, ContactIdentity, OutboxEvent, UpdateRecord
from contactsync.row_batches import recordset

_CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
_RECORDS: Table = UpdateRecord.__table__  # type: ignore[assignment]
_OUTBOX: Table = OutboxEvent.__table__  # type: ignore[assignment]
_IDENTITIES: Table = ContactIdentity.__table__  # type: ignore[assignment]

# Three statements sent at once (psycopg's pipeline) with the transaction's BEGIN: one round
# trip. Each takes its snapshot when it starts, so the two reads run after the locks are held,
# which keeps the duplicate check exact (a delivery that committed while this one waited for
# a lock is seen). `= ANY(array)` rather than `IN (SELECT unnest(array))`: one index scan
# to plan instead of a join, and both are planned at every run (`plan_cache_mode`,
# contactsync/db.py): 0.1 ms of PostgreSQL's CPU less an update (docs/benchmarks.md,
# "Session 8: drain").
# The two times also come as the text of the contact's public shape, formatted by the server
# as `timeutil.isoformat` does (milliseconds truncated): 4 µs of the worker's CPU less each.
_TEXT_TIME = """to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS {0}_text"""
_LOCK = (
    f"SELECT {', '.join(c.name for c in _CONTACTS.columns)}, "
    f"{_TEXT_TIME.format('created_at')}, {_TEXT_TIME.format('updated_at')} FROM contacts "
    "WHERE id = ANY(CAST(%(ids)s AS varchar[])) ORDER BY id FOR UPDATE"
)
_FINISHED = (
    "SELECT update_id, status, error, contact_id FROM update_records "
    "WHERE update_id = ANY(CAST(%(updates)s AS varchar[]))"
)
_HELD = (
    "SELECT account_id, key, field, contact_id FROM contact_identities "
    "WHERE contact_id IN (SELECT unnest(CAST(%(ids)s AS varchar[]))) UNION ALL "
    "SELECT account_id, key, field, contact_id FROM contact_identities "
    "WHERE account_id = ANY(CAST(%(accounts)s AS varchar[])) "
    "AND key IN (SELECT unnest(CAST(%(keys)s AS varchar[])))"
)

_CONTACT_COLUMNS = (
    "name", "email", "phone", "company", "position", "linkedin_url", "tags", "custom_fields",
    "external_ids", "field_seqs", "updated_at",
)
_CREATED_COLUMNS = ("id", "account_id", *_CONTACT_COLUMNS[:6], "source", *_CONTACT_COLUMNS[6:],
                    "created_at")
_RECORD_COLUMNS = (
    "update_id", "account_id", "contact_id", "seq", "status", "received_at", "applied_at",
    "changed_fields", "error",
)
_IDENTITY_COLUMNS = ("account_id", "key", "field", "contact_id")
_EVENT_COLUMNS = ("event_id", "payload", "created_at")


def _names(columns: Sequence[str]) -> str:
    return ", ".join(columns)


@dataclass(frozen=True)
class _Part:
    """One data-modifying CTE of the write: its name, the parameters it reads, its SQL
    (`{after}`: where it waits for the part named `after`, if that part is written too)."""

    name: str
    params: tuple[str, ...]
    sql: str
    after: str | None = None

    def cte(self, shape: frozenset[str]) -> str:
        # A scalar count in a WHERE runs the CTE it counts first.
        after = f"WHERE (SELECT count(*) FROM {self.after}) >= 0" if self.after in shape else ""
        return f"{self.name} AS ({self.sql.format(after=after)}\n)"


# Every write of a batch, in this order. Identities released are deleted before those claimed
# are inserted (a key moving from one contact to another in one batch), a replayed dead
# letter's `failed` record before its new one. The identities' foreign key is checked at the
# end of the statement, after the contacts it creates.
_SET_CONTACTS = ", ".join(f"{c} = r.{c}" for c in _CONTACT_COLUMNS)
_PARTS = (
    _Part("updated", ("updated",), f"""
  UPDATE contacts SET {_SET_CONTACTS}
  FROM {recordset(_CONTACTS, {"locked_id": "id", **{c: c for c in _CONTACT_COLUMNS}},
                  "updated")}
  WHERE contacts.id = r.locked_id RETURNING 1"""),
    _Part("created", ("created",), f"""
  INSERT INTO contacts ({_names(_CREATED_COLUMNS)})
  SELECT {_names(_CREATED_COLUMNS)}
  FROM {recordset(_CONTACTS, {c: c for c in _CREATED_COLUMNS}, "created")} RETURNING 1"""),
    _Part("released", ("released_accounts", "released_keys"), """
  DELETE FROM contact_identities WHERE (account_id, key) IN (
    SELECT * FROM unnest(CAST(:released_accounts AS varchar[]),
                         CAST(:released_keys AS varchar[]))
  ) RETURNING 1"""),
    _Part("claimed", ("claimed",), f"""
  INSERT INTO contact_identities ({_names(_IDENTITY_COLUMNS)})
  SELECT {_names(_IDENTITY_COLUMNS)}
  FROM {recordset(_IDENTITIES, {c: c for c in _IDENTITY_COLUMNS}, "claimed")}
  {{after}} ORDER BY row_number RETURNING 1""", after="released"),
    _Part("replaced", ("replaced",), """
  DELETE FROM update_records WHERE update_id IN (
    SELECT unnest(CAST(:replaced AS varchar[]))
  ) RETURNING 1"""),
    _Part("recorded", ("records",), f"""
  INSERT INTO update_records ({_names(_RECORD_COLUMNS)})
  SELECT {_names(_RECORD_COLUMNS)}
  FROM {recordset(_RECORDS, {c: c for c in _RECORD_COLUMNS}, "records")}
  {{after}} RETURNING 1""", after="replaced"),
    _Part("published", ("events",), f"""
  INSERT INTO outbox ({_names(_EVENT_COLUMNS)})
  SELECT {_names(_EVENT_COLUMNS)}
  FROM {recordset(_OUTBOX, {c: c for c in _EVENT_COLUMNS}, "events")}
  ORDER BY row_number RETURNING 1"""),
)


@cache  # at most one statement per subset of the seven parts
def _write_statement(shape: frozenset[str]) -> TextClause:
    """Return the one statement that writes the parts named in `shape`, and only them.

    A part with no rows is left out rather than sent empty: each is planned at every run
    (`plan_cache_mode`, contactsync/db.py) and runs its empty scan, and a lone update needs
    three of the seven. With all seven, its write cost PostgreSQL 0.81 ms of CPU; with its
    three, 0.51-0.55 (docs/benchmarks.md, "Session 8: drain").
    """
    parts = [part for part in _PARTS if part.name in shape]
    ctes = ", ".join(part.cte(shape) for part in parts)
    counts = ", ".join(f"(SELECT count(*) FROM {part.name})" for part in parts)
    return text(f"WITH {ctes}\nSELECT {counts}")


def read_locked(
    connection: Connection, contact_ids: list[str], update_ids: list[str],
    accounts: list[str], keys: list[str], *, identities: bool = True,
) -> tuple[list[Any], list[Any], list[Any]]:
    """Lock `contact_ids` (in id order) and return their rows, the records of `update_ids`,
    and the identity rows of those contacts and of `keys` within `accounts` (none read unless
    `identities`): one round trip.

    The rows are named tuples with the columns' names, as SQLAlchemy's rows read; a contact's
    also has `created_at_text` and `updated_at_text`, its times as `timeutil.isoformat` writes
    them.
    """
    driver: Any = connection.connection.driver_connection
    params = {"ids": contact_ids, "updates": update_ids, "accounts": accounts, "keys": keys}
    statements = (_LOCK, _FINISHED, _HELD) if identities else (_LOCK, _FINISHED)
    try:
        begin = _begins_here(driver)
        with driver.pipeline():
            if begin:
                driver.execute("BEGIN")
            cursors = [driver.cursor(row_factory=namedtuple_row) for _ in statements]
            for cursor, sql in zip(cursors, statements, strict=True):
                cursor.execute(sql, params)
        locked, finished, *held = (list(cursor.fetchall()) for cursor in cursors)
        return locked, finished, held[0] if held else []
    except psycopg.Error as exc:
        raise driver_error(connection, exc) from exc


def _begins_here(driver: psycopg.Connection[Any]) -> bool:
    """Tell whether the transaction is not begun yet, and if so, have this pipeline send the
    BEGIN: psycopg sends its own BEGIN alone and waits for it (its pipeline syncs after it),
    one round trip of three for a lone update. Only with psycopg's autocommit on does it leave
    the BEGIN to us; it is turned off again at the connection's next begin and when it goes
    back to the pool (`contactsync.db`), and the COMMIT or ROLLBACK that ends the transaction
    is sent as ever."""
    plain = driver.isolation_level is None and driver.read_only is None \
        and driver.deferrable is None  # anything else belongs in psycopg's own BEGIN
    if driver.autocommit or not plain or driver.info.transaction_status != TransactionStatus.IDLE:
        return False
    driver.autocommit = True
    return True


def write_batch(
    session: Session, *, updated: Sequence[dict[str, Any]],
    created: Sequence[dict[str, Any]], released: Sequence[tuple[str, str]],
    claimed: Sequence[dict[str, Any]], replaced: Sequence[str],
    records: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]], with_commit: bool,
) -> None:
    """Write a batch's merged contacts, created contacts, identities released and claimed,
    update records (`replaced`: the ids whose `failed` record they replace) and outbox
    events: one statement; `with_commit`, sent with the transaction's COMMIT."""
    accounts = [a for a, _ in released]
    keys = [k for _, k in released]
    rows: dict[str, Sequence[Any]] = {
        "updated": updated, "created": created, "released": released, "claimed": claimed,
        "replaced": replaced, "recorded": records, "published": events,
    }
    shape = frozenset(name for name, part_rows in rows.items() if part_rows)
    if not shape:
        return  # nothing to write: the unit of work commits as it would anyway
    every = {
        "updated": _json(updated), "created": _json(created),
        "released_accounts": accounts, "released_keys": keys, "claimed": _json(claimed),
        "replaced": list(replaced), "records": _json(records), "events": _json(events),
    }
    params = {p: every[p] for part in _PARTS if part.name in shape for p in part.params}
    statement = _write_statement(shape)
    if with_commit:
        Database.write_with_commit(session, statement, params)
    else:
        session.connection().execute(statement, params)


def _json(rows: Sequence[dict[str, Any]]) -> str:
    # orjson writes aware datetimes as RFC 3339 with their offset, which timestamptz reads.
    return orjson.dumps(list(rows)).decode()
