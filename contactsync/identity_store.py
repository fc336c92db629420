"""Identities in storage: who holds which, claimed and released with the contact's change.

The primary key of `contact_identities` (account, key) is the final guard: a look-up before
the write decides the answer (a conflict naming the holder), and the index refuses the write
of a second holder that a concurrent transaction made after the look-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, select, text, tuple_
from sqlalchemy.exc import IntegrityError

from contactsync.identities import EXTERNAL_FIELD_PREFIX, identities_of, stored_key
from contactsync.merge import Change
from contactsync.models import ContactIdentity
from contactsync.row_batches import RowInsert

IDENTITIES: Table = ContactIdentity.__table__  # type: ignore[assignment]
_COLUMNS = "account_id, key, field, contact_id"
# On PostgreSQL each list travels as one array parameter: an IN list of hundreds of
# parameters cost more to plan than the index look-ups it asks for.
# (`IN (SELECT unnest(…))`, not `= ANY(…)`: the planner joins it, where `ANY` compared
# each row scanned with the whole array.)
_PG_BY_CONTACT = text(
    f"SELECT {_COLUMNS} FROM contact_identities "
    "WHERE contact_id IN (SELECT unnest(CAST(:ids AS varchar[])))"
)
_PG_BY_KEY = text(
    f"SELECT {_COLUMNS} FROM contact_identities "
    "WHERE account_id = ANY(CAST(:accounts AS varchar[])) "
    "AND key IN (SELECT unnest(CAST(:keys AS varchar[])))"
)
_PG_DELETE = text(
    "DELETE FROM contact_identities WHERE (account_id, key) IN "
    "(SELECT * FROM unnest(CAST(:accounts AS varchar[]), CAST(:keys AS varchar[])))"
)
_BY_CONTACT = select(IDENTITIES).where(
    IDENTITIES.c.contact_id.in_(bindparam("ids", expanding=True))
)
_BY_KEY = select(IDENTITIES).where(
    IDENTITIES.c.account_id.in_(bindparam("accounts", expanding=True)),
    IDENTITIES.c.key.in_(bindparam("keys", expanding=True)),
)
_DELETE = delete(IDENTITIES).where(
    tuple_(IDENTITIES.c.account_id, IDENTITIES.c.key).in_(bindparam("pairs", expanding=True))
)
_INSERT = RowInsert(IDENTITIES, ("account_id", "key", "field", "contact_id"))
_CONSTRAINTS = ("contact_identities_pkey", "contact_identities.account_id")


def conflict_error(field: str, holder: str) -> dict[str, Any]:
    """Return the error of a write refused because another contact holds the identity."""
    return {
        "code": "CONFLICT",
        "message": f"Another contact of this account already has this {_label(field)}.",
        "details": {"field": field, "contact_id": holder},
    }


def _label(field: str) -> str:
    if field.startswith(EXTERNAL_FIELD_PREFIX):
        return f"{field.removeprefix(EXTERNAL_FIELD_PREFIX)} id"
    return "LinkedIn URL" if field == "linkedin_url" else field


def is_identity_race(exc: BaseException) -> bool:
    """Tell whether `exc` is the identity index refusing a second holder."""
    if not isinstance(exc, IntegrityError):
        return False
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    named = getattr(diag, "constraint_name", None) or str(orig)
    return any(name in named for name in _CONSTRAINTS)


def is_identity(name: str) -> bool:
    return name in ("email", "linkedin_url") or name.startswith(EXTERNAL_FIELD_PREFIX)


def may_touch_identities(patch: Mapping[str, Any], upsert: bool) -> bool:
    """Tell whether an update can claim, release or look up an identity: an upsert, or a
    patch that names an identity field. A batch of none reads no identity rows."""
    return upsert or "external_ids" in patch or any(is_identity(name) for name in patch)


def _key(name: str, value: Any) -> str | None:
    return None if value is None else stored_key(name, str(value))


class IdentityBook:
    """The identities a batch may touch, as its updates leave them, written out once at the end.

    Holds every identity row of the locked contacts and every row of the identities the
    updates name: each claim is decided in memory, in sequence order, so that of two updates
    of one batch racing for an identity the first wins.
    """

    def __init__(self, rows: Iterable[Any]) -> None:
        self._initial: dict[tuple[str, str], tuple[str, str]] = {
            (row.account_id, row.key): (row.contact_id, row.field) for row in rows
        }
        self._holders = dict(self._initial)

    @classmethod
    def load(
        cls, connection: Connection, contact_ids: list[str],
        patches: Iterable[tuple[str, Mapping[str, Any]]],
    ) -> IdentityBook:
        """Read the rows of `contact_ids` and of the identities in `(account_id, patch)`s."""
        accounts, keys = cls.wanted(patches)
        pg = connection.dialect.name == "postgresql"
        rows: list[Any] = []
        if contact_ids:
            rows += connection.execute(_PG_BY_CONTACT if pg else _BY_CONTACT, {"ids": contact_ids})
        if keys:
            params = {"accounts": accounts, "keys": keys}
            rows += connection.execute(_PG_BY_KEY if pg else _BY_KEY, params)
        return cls(rows)

    @staticmethod
    def wanted(
        patches: Iterable[tuple[str, Mapping[str, Any]]],
    ) -> tuple[list[str], list[str]]:
        """Return the accounts and the stored keys of the identities `(account_id, patch)`s
        name: what a batch reads besides its contacts' own rows."""
        accounts: set[str] = set()
        keys: set[str] = set()
        for account_id, patch in patches:
            fields = {n: patch.get(n) for n in ("email", "linkedin_url")}
            external = {s: v for s, v in (patch.get("external_ids") or {}).items() if v}
            found = identities_of(fields, external)
            if found:
                accounts.add(account_id)
                keys.update(found.values())
        return sorted(accounts), sorted(keys)

    def holder(self, account_id: str, key: str) -> str | None:
        """Return the contact that holds identity `key` as the batch has left it, if any."""
        held = self._holders.get((account_id, key))
        return None if held is None else held[0]

    def contact_ids(self) -> set[str]:
        """Return every contact that holds one of the identities read."""
        return {contact_id for contact_id, _ in self._holders.values()}

    def claim(
        self, account_id: str, contact_id: str, changes: Mapping[str, Change]
    ) -> dict[str, Any] | None:
        """Move the identities `changes` make to `contact_id`; or, if another contact holds
        one of them, change nothing and return the conflict error."""
        moves = []
        for name, change in changes.items():
            if not is_identity(name):
                continue
            old, new = _key(name, change.old), _key(name, change.new)
            if old == new:
                continue
            if new is not None:
                holder = self._holders.get((account_id, new))
                if holder is not None and holder[0] != contact_id:
                    return conflict_error(name, holder[0])
            moves.append((name, old, new))
        for name, old, new in moves:
            # A contact left without the row of its old value (two already shared it before
            # identities were indexed) releases nothing.
            if old is not None and self._holders.get((account_id, old), ("",))[0] == contact_id:
                del self._holders[(account_id, old)]
            if new is not None:
                self._holders[(account_id, new)] = (contact_id, name)
        return None

    def changes(self) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        """Return the (account, key)s released and the rows claimed, in key order."""
        gone = [
            (a, k) for (a, k), held in self._initial.items() if self._holders.get((a, k)) != held
        ]
        # In key order: two transactions inserting overlapping keys wait on each other in one
        # order, never in a cycle.
        new = [
            {"account_id": a, "key": k, "field": field, "contact_id": contact_id}
            for (a, k), (contact_id, field) in sorted(self._holders.items())
            if self._initial.get((a, k)) != (contact_id, field)
        ]
        return gone, new

    def write(self, connection: Connection) -> None:
        """Delete the rows released and insert the rows claimed."""
        gone, new = self.changes()
        if gone and connection.dialect.name == "postgresql":
            accounts, keys = zip(*gone, strict=True)
            connection.execute(_PG_DELETE, {"accounts": list(accounts), "keys": list(keys)})
        elif gone:
            connection.execute(_DELETE, {"pairs": gone})
        _INSERT.run(connection, new)


def holder_of(
    connection: Connection, account_id: str, identities: Mapping[str, str]
) -> tuple[str, str] | None:
    """Return (field, contact id) of the first of `identities` another contact holds."""
    rows = connection.execute(
        _BY_KEY, {"accounts": [account_id], "keys": sorted(identities.values())}
    )
    by_key = {row.key: row.contact_id for row in rows}
    for name, key in identities.items():
        if key in by_key:
            return name, by_key[key]
    return None


def insert_identities(
    connection: Connection, account_id: str, contact_id: str, identities: Mapping[str, str]
) -> None:
    """Insert the rows of a new contact's identities (the index refuses a taken one)."""
    rows = [
        {"account_id": account_id, "key": key, "field": name, "contact_id": contact_id}
        for name, key in sorted(identities.items(), key=lambda item: item[1])
    ]
    _INSERT.run(connection, rows)

