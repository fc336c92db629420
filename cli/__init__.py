"""The `contactsync` command: one parser, errors as one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from cli import admin, exporter, importer, services, webhooks
from cli.errors import CliError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _rate(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*(/s)?\s*", text)
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r}: use a number per second, like 500/s"
        )
    return int(match.group(1))


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: use a whole number, 1 or more")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    parser = _Parser(prog="contactsync", description="Queue-backed contact updates.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", help="run everything: migrations, demo data, gateway, worker, flower")
    up.add_argument("--port", type=_port, default=8000)
    up.add_argument("--flower-port", type=_port, default=5555)
    up.set_defaults(handler=services.up)

    gateway = sub.add_parser("gateway", help="serve the HTTP gateway")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=_port, default=8000)
    gateway.add_argument("--workers", type=_positive, default=1)
    gateway.set_defaults(handler=services.gateway)

    worker = sub.add_parser("worker", help="run a Celery worker on the update queues")
    worker.add_argument("--concurrency", type=_positive, default=None)
    worker.add_argument(
        "--queues", default=None,
        help="comma-separated (default: contacts.updates,contacts.bulk; webhook delivery "
        "runs on workers of its own: --queues webhooks)",
    )
    worker.set_defaults(handler=services.worker)

    flower = sub.add_parser("flower", help="serve the Flower dashboard")
    flower.add_argument("--port", type=_port, default=5555)
    flower.add_argument("--address", default="127.0.0.1")
    flower.set_defaults(handler=services.flower)

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, parser_class=_Parser
    )
    upgrade = db.add_parser("upgrade", help="migrate to the newest schema")
    upgrade.set_defaults(handler=admin.db_upgrade)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True, parser_class=_Parser
    )
    create = keys.add_parser("create", help="create a key (the key is the last line of output)")
    create.add_argument("--account", required=True)
    create.add_argument("--permission", action="append", required=True, dest="permissions")
    create.add_argument("--rate-limit", type=_rate, default=None)
    create.add_argument("--update-rate-limit", type=_rate, default=None,
                        help="batch items per second (default 1000/s, bursts of ten times it)")
    create.set_defaults(handler=admin.keys_create)
    keys.add_parser("list", help="list keys").set_defaults(handler=admin.keys_list)
    revoke = keys.add_parser(
        "revoke", help="revoke one key by its shown prefix (csk_live_ and 8 characters)"
    )
    revoke.add_argument("prefix")
    revoke.set_defaults(handler=admin.keys_revoke)

    imports = sub.add_parser("import", help="send a CSV or JSONL file's updates in batches")
    importer.add_arguments(imports)
    imports.set_defaults(handler=importer.run)

    exports = sub.add_parser("export", help="write every contact of the key's account to a file")
    exporter.add_arguments(exports)
    exports.set_defaults(handler=exporter.run)

    webhooks.add_arguments(sub.add_parser("webhooks", help="accounts' webhook endpoints")
                           .add_subparsers(dest="webhooks_command", required=True,
                                           parser_class=_Parser))

    events = sub.add_parser("events", help="change events").add_subparsers(
        dest="events_command", required=True, parser_class=_Parser
    )
    tail = events.add_parser("tail", help="follow the change-event stream")
    tail.add_argument("--from-start", action="store_true", help="print past events first")
    tail.add_argument("--count", type=_positive, default=None, help="stop after this many")
    tail.set_defaults(handler=admin.events_tail)

    dead = sub.add_parser("dead-letters", help="updates that failed every retry").add_subparsers(
        dest="dead_command", required=True, parser_class=_Parser
    )
    dead.add_parser("list", help="list parked updates").set_defaults(handler=admin.dead_list)
    replay = dead.add_parser("replay", help="queue parked updates again (all, or the ids given)")
    replay.add_argument("ids", nargs="*")
    replay.set_defaults(handler=admin.dead_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except (CliError, ValueError) as exc:
        return _fail(str(exc))
    except SQLAlchemyError as exc:
        return _fail(f"the database is not usable: {_first_line(exc)}")
    except RedisError as exc:
        return _fail(f"Redis is not usable: {_first_line(exc)}")
    except OSError as exc:
        return _fail(str(exc))


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fail(message: str) -> int:
    print(f"contactsync: error: {message}", file=sys.stderr)
    return 1
