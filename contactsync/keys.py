"""Accounts and API keys: create, look up by hash, list, revoke."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from contactsync.ids import (
    API_KEY_PREFIX,
    API_KEY_RANDOM_LENGTH,
    display_prefix,
    hash_api_key,
    new_account_id,
    new_api_key,
    new_key_id,
)
from contactsync.models import Account, ApiKey
from contactsync.timeutil import utcnow

PERMISSIONS = ("contacts:read", "contacts:write", "contacts:delete", "webhooks:manage")
# What `keys list` shows of a key (its trailing ellipsis allowed, as copied), or the whole key.
_SHOWN = re.compile(re.escape(API_KEY_PREFIX) + r"[A-Za-z0-9]{8}…?")
_WHOLE = re.compile(re.escape(API_KEY_PREFIX) + rf"[A-Za-z0-9]{{{API_KEY_RANDOM_LENGTH}}}")


class KeyNameError(ValueError):
    """A `keys revoke` argument that does not name exactly one key."""


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
    # A shown prefix names one key: 8 random characters rarely repeat, and never do here.
    while session.scalar(select(ApiKey.id).where(ApiKey.prefix == display_prefix(secret))):
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
    digest = hash_api_key(secret)
    return find_keys(session, [digest]).get(digest)


def find_keys(session: Session, digests: list[str]) -> dict[str, Principal]:
    """Return the principal of each live key among these key hashes, by hash: one query."""
    rows = session.scalars(select(ApiKey).where(ApiKey.key_hash.in_(digests)))
    return {
        row.key_hash: Principal(
            row.account_id, row.id, frozenset(row.permissions), row.rate_limit_per_second,
            row.update_rate_limit_per_second,
        )
        for row in rows
        if row.revoked_at is None
    }


def list_keys(session: Session) -> list[tuple[ApiKey, Account]]:
    """Return every key with its account, newest first."""
    query = select(ApiKey, Account).join(Account, Account.id == ApiKey.account_id)
    return [(k, a) for k, a in session.execute(query.order_by(ApiKey.created_at.desc())).tuples()]


def revoke(session: Session, name: str) -> ApiKey | None:
    """Revoke the one live key `name` names (its shown prefix, or the whole key); return it.

    None when no live key has that name; KeyNameError when `name` is not a shown prefix or
    names more than one key, so that a typo can never revoke keys it did not mean.
    """
    if _WHOLE.fullmatch(name):
        named = select(ApiKey).where(ApiKey.key_hash == hash_api_key(name))
    elif _SHOWN.fullmatch(name):
        named = select(ApiKey).where(ApiKey.prefix == name.removesuffix("…"))
    else:
        raise KeyNameError(
            f"not a key prefix: give {API_KEY_PREFIX} and the 8 characters after it, "
            "as `contactsync keys list` shows"
        )
    rows = session.scalars(named.where(ApiKey.revoked_at.is_(None)).limit(2)).all()
    if len(rows) > 1:
        raise KeyNameError(f"{name} names more than one key: give the whole key to revoke one")
    if not rows:
        return None
    rows[0].revoked_at = utcnow()
    return rows[0]
