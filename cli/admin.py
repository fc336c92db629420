"""Administrative commands: migrations, keys, the event stream, dead letters."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

import orjson
from redis import Redis

from contactsync import dead_letters
from contactsync.db import Database
from contactsync.keys import KeyNameError, create_key, list_keys, revoke
from contactsync.migrate import upgrade
from contactsync.settings import get_settings
from contactsync.timeutil import isoformat


def db_upgrade(_: argparse.Namespace) -> int:
    settings = get_settings()
    upgrade(settings.database_url)
    print(f"database at {_safe_url(settings.database_url)} is at the newest schema")
    return 0


def keys_create(args: argparse.Namespace) -> int:
    db = Database(get_settings())
    try:
        with db.unit_of_work() as session:
            row, secret = create_key(session, args.account, args.permissions, args.rate_limit,
                                     args.update_rate_limit)
            print(f"account: {args.account} ({row.account_id})")
            print(f"permissions: {' '.join(row.permissions)}")
            if row.rate_limit_per_second:
                print(f"rate limit: {row.rate_limit_per_second}/s")
            if row.update_rate_limit_per_second:
                print(f"update rate limit: {row.update_rate_limit_per_second}/s")
            print("this key is shown once; store it now:")
    finally:
        db.dispose()
    print(secret)
    return 0


def keys_list(_: argparse.Namespace) -> int:
    db = Database(get_settings())
    try:
        with db.reading() as session:
            rows = list_keys(session)
            for key, account in rows:
                state = f"revoked {isoformat(key.revoked_at)}" if key.revoked_at else "active"
                print(
                    f"{key.prefix}…  {account.name}  {','.join(key.permissions)}  "
                    f"created {isoformat(key.created_at)}  {state}"
                )
            if not rows:
                print("no keys yet: contactsync keys create --account NAME --permission P")
    finally:
        db.dispose()
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    db = Database(get_settings())
    try:
        with db.unit_of_work() as session:
            revoked = revoke(session, args.prefix)
            name = revoked.prefix if revoked else None
    except KeyNameError as exc:
        print(f"contactsync: error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    if name is None:
        print(f"contactsync: error: no active key is named {args.prefix[:20]!r}", file=sys.stderr)
        return 1
    print(f"revoked {name}…")
    return 0


def events_tail(args: argparse.Namespace) -> int:
    settings = get_settings()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    redis.ping()
    last_id: str | bytes = "0-0" if args.from_start else "$"
    seen = 0
    while args.count is None or seen < args.count:
        reply: list[Any] = redis.xread(  # type: ignore[assignment]
            {settings.events_stream: last_id}, block=1000, count=100
        )
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id
                print(fields[b"event"].decode(), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return 0
    return 0


def dead_list(_: argparse.Namespace) -> int:
    db = Database(get_settings())
    try:
        with db.reading() as session:
            letters = dead_letters.pending(session)
            for letter in letters:
                print(orjson.dumps({
                    "update_id": letter.update_id, "contact_id": letter.contact_id,
                    "queue": letter.queue, "failed_at": isoformat(letter.failed_at),
                    "error": letter.error,
                    "fields": sorted(letter.body.get("patch", {})),
                }).decode())
            if not letters:
                print("no dead letters", file=sys.stderr)
    finally:
        db.dispose()
    return 0


def dead_replay(args: argparse.Namespace) -> int:
    settings = get_settings()
    db = Database(settings)
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=3)
    try:
        with db.unit_of_work() as session:
            queued = dead_letters.replay(
                session, redis, args.ids, origin=f"cli@{socket.gethostname()}:{os.getpid()}"
            )
    finally:
        db.dispose()
        redis.close()
    missing = sorted(set(args.ids) - set(queued))
    for update_id in queued:
        print(f"queued {update_id}")
    if missing:
        print(f"contactsync: error: not parked: {', '.join(missing)}", file=sys.stderr)
        return 1
    if not queued:
        print("no dead letters to replay", file=sys.stderr)
    return 0


def _safe_url(url: str) -> str:
    """Return a database URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        rest = f"{credentials.split(':')[0]}:***@{host}" if ":" in credentials else rest
    return scheme + sep + rest
