"""Accounts and API keys: create, look up by hash, list, revoke."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from contactsync.ids import (
    KEY_DISPLAY_PREFIX_LENGTH,
    display_prefix,
    hash_api_key,
    new_account_id,
    new_api_key,
    new_key_id,
)
from contactsync.models import Account, ApiKey
from contactsync.timeutil import utcnow

PERMISSIONS = ("contacts:read", "contacts:write", "contacts:delete")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account a key belongs to, and what the key may do."""

    account_id: str
    key_id: str
    permissions: frozenset[str]
    rate_limit_per_second: int | None
    update_rate_limit_per_second: int | None = None


def ensure_account(session: Session, name: str) -> Account:
    """Return the account with this name, creating it if new."""
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        account = Account(id=new_account_id(), name=name, created_at=utcnow())
        session.add(account)
        session.flush()
    return account


def create_key(
    session: Session,
    account_name: str,
    permissions: list[str],
    rate_limit_per_second: int | None = None,
    update_rate_limit_per_second: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for an account (made if new); return the row and the secret, shown once."""
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown:
        raise ValueError(f"unknown permission {unknown[0]!r} (known: {', '.join(PERMISSIONS)})")
    account = ensure_account(session, account_name)
    secret = new_api_key()
    row = ApiKey(
        id=new_key_id(), account_id=account.id, prefix=display_prefix(secret),
        key_hash=hash_api_key(secret), permissions=sorted(set(permissions)),
        rate_limit_per_second=rate_limit_per_second,
        update_rate_limit_per_second=update_rate_limit_per_second, created_at=utcnow(),
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    return row, secret


def authenticate(session: Session, secret: str) -> Principal | None:
    """Return the principal of a live key, or None for an unknown or revoked one."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(secret)))
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.account_id, row.id, frozenset(row.permissions),
                     row.rate_limit_per_second, row.update_rate_limit_per_second)


def list_keys(session: Session) -> list[tuple[ApiKey, Account]]:
    """Return every key with its account, newest first."""
    query = select(ApiKey, Account).join(Account, Account.id == ApiKey.account_id)
    return [(k, a) for k, a in session.execute(query.order_by(ApiKey.created_at.desc())).tuples()]


def revoke(session: Session, prefix: str) -> list[ApiKey]:
    """Revoke the live keys whose shown prefix starts with `prefix`; return them."""
    if len(prefix) < 8:
        raise ValueError("give at least the first 8 characters of the key")
    # A whole key, or more than its shown part, names the key by its shown part.
    shown = prefix[:KEY_DISPLAY_PREFIX_LENGTH]
    rows = session.scalars(
        select(ApiKey).where(
            ApiKey.prefix.startswith(shown, autoescape=True), ApiKey.revoked_at.is_(None)
        )
    ).all()
    now = utcnow()
    for row in rows:
        row.revoked_at = now
    return list(rows)
