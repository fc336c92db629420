"""`contactsync export`: every contact of the key's account, through the list's cursor, to a file.

The file appears whole or not at all: contacts go to a temporary file beside it, renamed over
FILE once the last page is written. CSV is laid out as `import` reads it (cli/export_csv.py),
so an export imports back and changes nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from cli.errors import CliError
from cli.export_csv import CsvLayout
from cli.import_rows import FORMATS, Format, detect_format
from cli.importer import (
    MAX_BUSY_ATTEMPTS,
    MAX_UNREACHABLE_ATTEMPTS,
    RETRYABLE,
    Sleep,
    api_endpoint,
    backoff,
    retry_after,
)
from cli.importer import _answer as answer
from cli.importer import _describe as describe

LIST_PATH = "/external/v1/contacts"
PAGE_SIZE = 100  # the endpoint's largest page


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `contactsync export`."""
    parser.add_argument("file", type=Path, metavar="FILE", help="a .csv or .jsonl file to write")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="default: from the extension (.csv, .jsonl)")
    parser.add_argument("--updated-since", type=instant, default=None, metavar="T",
                        help="only contacts updated at or after T (RFC 3339, like "
                             "2024-01-15T10:30:00Z)")
    parser.add_argument("--api-url", metavar="URL", help="default: CONTACTSYNC_API_URL")
    parser.add_argument("--api-key", metavar="KEY", help="default: CONTACTSYNC_API_KEY")


def instant(text: str) -> datetime:
    """Parse an RFC 3339 date-time with its offset, as the list endpoint does."""
    try:
        value = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or "T" not in text.upper():
        raise argparse.ArgumentTypeError(
            f"invalid date-time {text[:40]!r}: use RFC 3339 with an offset, "
            "like 2024-01-15T10:30:00Z"
        )
    return value


class Pager:
    """Read the account's contacts page by page, retrying what is worth retrying."""

    def __init__(self, client: httpx.Client, since: datetime | None,
                 sleep: Sleep = time.sleep) -> None:
        self.client = client
        self.params: dict[str, str | int] = {
            "limit": PAGE_SIZE, "sort_by": "created_at", "sort_order": "asc",
        }
        if since is not None:
            self.params["updated_since"] = since.isoformat()
        self.sleep = sleep
        self.total = 0

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        """Yield each page of contacts, oldest first, until the cursor runs out."""
        cursor: str | None = None
        while True:
            data = self._get({**self.params, **({"cursor": cursor} if cursor else {})})
            try:
                contacts, pagination = data["contacts"], data["pagination"]
                self.total = int(pagination["total"])
                cursor = pagination["next_cursor"]
            except (KeyError, TypeError, ValueError):
                raise CliError("unexpected answer from the list endpoint") from None
            yield contacts
            if not cursor:
                return

    def _get(self, params: dict[str, str | int]) -> Any:
        busy = unreachable = 0
        while True:
            try:
                response = self.client.get(LIST_PATH, params=params)
            except httpx.TransportError as exc:
                unreachable += 1
                if unreachable >= MAX_UNREACHABLE_ATTEMPTS:
                    raise CliError(f"cannot reach {self.client.base_url} after {unreachable} "
                                   f"attempts: {describe(exc)}") from None
                self.sleep(backoff(unreachable))
                continue
            if response.status_code == 200:
                try:
                    return response.json()["data"]
                except (ValueError, KeyError, TypeError):
                    raise CliError(f"unexpected answer from the list endpoint: "
                                   f"{response.text[:100]!r}") from None
            if response.status_code in (401, 403):
                raise CliError(f"the API refused the key: {answer(response)}")
            if response.status_code not in RETRYABLE:
                raise CliError(f"the API refused the listing: {answer(response)}")
            busy += 1
            if busy >= MAX_BUSY_ATTEMPTS:
                raise CliError(f"gave up after {busy} attempts: {answer(response)}")
            wait = retry_after(response)
            self.sleep(wait if wait is not None else backoff(busy))


def _jsonl(contact: dict[str, Any]) -> str:
    return json.dumps(contact, ensure_ascii=False) + "\n"


def _write_csv(spool: IO[str], layout: CsvLayout, out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(layout.header())
    spool.seek(0)
    for line in spool:
        writer.writerow(layout.row(json.loads(line)))


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("exporting"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.completed} contacts"), TimeRemainingColumn(),
        disable=not enabled,
    )


def _export(pager: Pager, fmt: Format, out: IO[str]) -> int:
    """Write every contact to `out`; return how many."""
    count = 0
    layout = CsvLayout()
    # CSV needs every contact before its header: the pages wait in a file, not in memory.
    with ExitStack() as resources:
        target = (resources.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))
                  if fmt == "csv" else out)
        progress = resources.enter_context(_progress(sys.stdout.isatty()))
        bar = progress.add_task("export", total=None)
        for contacts in pager.pages():
            for contact in contacts:
                target.write(_jsonl(contact))
                if fmt == "csv":
                    layout.plan(contact)
            count += len(contacts)
            progress.update(bar, completed=count, total=max(pager.total, count))
        if fmt == "csv":
            _write_csv(target, layout, out)
    return count


def run(args: argparse.Namespace) -> int:
    """Export the account's contacts to FILE; exit 0 when every one was written."""
    api_url, api_key = api_endpoint(args)
    path: Path = args.file
    fmt = detect_format(path, args.format)
    since: datetime | None = args.updated_since
    if path.is_dir():
        raise CliError(f"{path} is a folder: name the file to write")
    started = time.monotonic()
    headers = {"X-API-Key": api_key, "User-Agent": "contactsync-export"}
    timeout = httpx.Timeout(60.0, connect=10.0)
    directory = path.resolve().parent
    if not directory.is_dir():
        raise CliError(f"no such folder: {directory}")
    descriptor, partial = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.",
                                           suffix=".partial")
    try:
        with open(descriptor, "w", encoding="utf-8", newline="") as out, \
                httpx.Client(base_url=api_url, headers=headers, timeout=timeout) as client:
            count = _export(Pager(client, since), fmt, out)
        os.replace(partial, path)
    except KeyboardInterrupt:
        print(f"contactsync: interrupted; {path} was not written", file=sys.stderr)
        return 130
    finally:
        Path(partial).unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    which = f" updated since {since.isoformat()}" if since else ""
    print(f"exported {count} contacts{which} to {path} ({fmt}) in {elapsed:.1f} s")
    return 0
