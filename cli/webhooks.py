"""`contactsync webhooks`: an operator's view of accounts' webhook endpoints, on the database."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.errors import CliError
from contactsync.db import Database
from contactsync.errors import ValidationFailed
from contactsync.models import Account
from contactsync.settings import Settings, get_settings
from contactsync.timeutil import isoformat, utcnow
from contactsync.webhook_endpoints import (
    announce_change,
    create_endpoint,
    delete_endpoint,
    get_endpoint,
    list_attempts,
    list_endpoints,
    replay,
)
from contactsync.webhook_schemas import (
    EVENT_TYPES,
    WebhookCreate,
    WebhookReplay,
    instant,
    parse_webhook_body,
)
from contactsync.webhook_secrets import SecretKeyError
from contactsync.webhook_urls import UnsafeWebhookUrl

B = TypeVar("B", WebhookCreate, WebhookReplay)


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `webhooks add|list|remove|deliveries|replay` to the command line."""
    add = sub.add_parser("add", help="register an endpoint (its secret is the last line)")
    add.add_argument("url")
    add.add_argument("--account", required=True, help="the account's name")
    add.add_argument("--event", action="append", required=True, dest="events",
                     choices=EVENT_TYPES, help="an event type it receives (repeat for more)")
    add.add_argument("--description", default="")
    add.set_defaults(handler=add_endpoint)
    listing = sub.add_parser("list", help="an account's endpoints")
    listing.add_argument("--account", required=True, help="the account's name")
    listing.set_defaults(handler=list_all)
    remove = sub.add_parser("remove", help="remove an endpoint with its deliveries")
    remove.add_argument("id")
    remove.set_defaults(handler=remove_endpoint)
    deliveries = sub.add_parser("deliveries", help="an endpoint's delivery attempts, newest first")
    deliveries.add_argument("id")
    deliveries.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    deliveries.set_defaults(handler=show_attempts)
    again = sub.add_parser("replay", help="send the account's kept events since T again")
    again.add_argument("id")
    again.add_argument("--since", required=True, help="RFC 3339, like 2024-01-15T10:30:00Z")
    again.set_defaults(handler=replay_since)


@contextmanager
def _session(write: bool) -> Iterator[tuple[Session, Settings]]:
    settings = get_settings()
    db = Database(settings)
    try:
        with db.unit_of_work() if write else db.reading() as session:
            yield session, settings
    except UnsafeWebhookUrl as exc:
        raise CliError(f"the URL is refused: {exc.reason}") from None
    except SecretKeyError as exc:
        raise CliError(str(exc)) from None
    finally:
        db.dispose()


def _announce(settings: Settings) -> None:
    """Tell the relays of a committed change (a warning, not a failure, if Redis is down)."""
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        announce_change(redis)
    finally:
        redis.close()


def _valid(model: type[B], body: dict[str, object]) -> B:
    try:
        return parse_webhook_body(model, body)
    except ValidationFailed as exc:
        field, message = next(iter(exc.fields.items()))
        raise CliError(f"{field} {message[0].lower()}{message[1:]}".rstrip(".")) from None


def _account(session: Session, name: str) -> str:
    account_id = session.scalar(select(Account.id).where(Account.name == name))
    if account_id is None:
        raise CliError(f"no account is named {name[:80]!r}")
    return account_id


def add_endpoint(args: argparse.Namespace) -> int:
    body = _valid(WebhookCreate, {"url": args.url, "events": args.events,
                                  "description": args.description})
    with _session(write=True) as (session, settings):
        endpoint, secret = create_endpoint(
            session, settings, _account(session, args.account), body.url, list(body.events),
            body.description, utcnow(),
        )
        print(f"webhook: {endpoint.id} (account {args.account})")
        print(f"url: {endpoint.url}")
        print(f"events: {' '.join(endpoint.events)}")
        print("this signing secret is shown once; store it now:")
    _announce(settings)
    print(secret)
    return 0


def list_all(args: argparse.Namespace) -> int:
    with _session(write=False) as (session, _):
        endpoints = list_endpoints(session, _account(session, args.account))
        for e in endpoints:
            state = "enabled" if e.enabled else f"disabled ({e.disabled_reason or 'no reason'})"
            print(f"{e.id}  {e.url}  {','.join(e.events)}  created {isoformat(e.created_at)}  "
                  f"{state}" + (f"  {e.description}" if e.description else ""))
        if not endpoints:
            print(f"no webhooks yet: contactsync webhooks add URL --account {args.account} "
                  "--event contact.updated")
    return 0


def remove_endpoint(args: argparse.Namespace) -> int:
    with _session(write=True) as (session, settings):
        if not delete_endpoint(session, None, args.id):
            raise _no_such(args.id)
    _announce(settings)
    print(f"removed {args.id}")
    return 0


def show_attempts(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise CliError("--limit must be 1 to 10000")
    with _session(write=False) as (session, _):
        if get_endpoint(session, None, args.id) is None:
            raise _no_such(args.id)
        attempts, _next = list_attempts(session, args.id, limit=args.limit)
        for attempt, status in attempts:
            code = attempt.status_code if attempt.status_code is not None else "-"
            print(f"{isoformat(attempt.attempted_at)}  {attempt.event_id}  {code}  "
                  f"{attempt.duration_ms} ms  {status}  {attempt.error or ''}".rstrip())
        if not attempts:
            print(f"no delivery attempts for {args.id} yet")
    return 0


def replay_since(args: argparse.Namespace) -> int:
    since = instant(_valid(WebhookReplay, {"since": args.since}).since)
    with _session(write=True) as (session, _):
        endpoint = get_endpoint(session, None, args.id, for_update=True)
        if endpoint is None:
            raise _no_such(args.id)
        count = replay(session, endpoint, since, utcnow())
    events = "event" if count == 1 else "events"
    print(f"{count} {events} since {isoformat(since)} will be sent to {args.id} again")
    return 0


def _no_such(endpoint_id: str) -> CliError:
    return CliError(f"no webhook is named {endpoint_id[:40]!r}")
