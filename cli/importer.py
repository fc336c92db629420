"""`contactsync import`: send a file's rows through a batch endpoint, resumably.

Rows go to batch update by `id`, or, with `--match` or for a recognised export, to batch
upsert by identity. Each batch carries an `Idempotency-Key` made of the run's id (kept in the
progress file, new with `--restart`) and the batch's place in the file, so a batch sent again
after an interruption is answered from the first sending and applied once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from cli.errors import CliError
from cli.import_exports import Export, MatchError, parse_match
from cli.import_rows import (
    FORMATS,
    Format,
    Row,
    RowError,
    detect_format,
    layout_of,
    read_items,
    upsert_item,
)
from contactsync.settings import get_settings
from tasks.retry import backoff_seconds

BATCH_PATH = "/external/v1/contacts/batch/update"
UPSERT_PATH = "/external/v1/contacts/batch/upsert"
DEFAULT_BATCH_SIZE = 500
MAX_BATCH_SIZE = 1000  # the endpoint's limit
MAX_BUSY_ATTEMPTS = 12  # per batch, while the API answers 429 / 502 / 503 / 504
MAX_UNREACHABLE_ATTEMPTS = 5  # per batch, while no answer comes (refused, reset, timed out)
MAX_WAIT_SECONDS = 300.0  # a longer Retry-After is cut to this
RETRYABLE = frozenset({429, 502, 503, 504})
STATE_VERSION = 2  # 2: the run id that idempotency keys are made of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `contactsync import`."""
    parser.add_argument("file", type=Path, metavar="FILE", help="a .csv or .jsonl file")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="default: from the extension (.csv, .jsonl)")
    parser.add_argument("--batch-size", type=_batch_size, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"rows per request, 1 to {MAX_BATCH_SIZE} (default %(default)s)")
    parser.add_argument("--match", type=_match, default=None, metavar="IDENTITY,...",
                        help="upsert by these identities, tried in order (email, linkedin_url, "
                             "external_ids.<system>); default: update by id, or the "
                             "recognised export's identities")
    parser.add_argument("--api-url", metavar="URL", help="default: CONTACTSYNC_API_URL")
    parser.add_argument("--api-key", metavar="KEY", help="default: CONTACTSYNC_API_KEY")
    parser.add_argument("--rejects", type=Path, default=None, metavar="PATH",
                        help="where rejected rows go (default: FILE.rejected.jsonl)")
    parser.add_argument("--restart", action="store_true",
                        help="ignore an interrupted run's progress and start from the first row")


def _batch_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"invalid batch size {text!r}: use 1 to {MAX_BATCH_SIZE}")
    return int(text)


def _match(text: str) -> tuple[str, ...]:
    try:
        return parse_match(text)
    except MatchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class Options:
    """What one import run reads, sends and writes."""

    path: Path
    fmt: Format
    batch_size: int
    api_url: str
    api_key: str
    rejects: Path
    state: Path
    restart: bool
    match: tuple[str, ...] | None = None  # None: update by id
    export: Export | None = None


def api_endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """Return the API URL and key from the options, else from the settings (the environment)."""
    settings = get_settings()
    api_url = (args.api_url or settings.api_url).rstrip("/")
    if not api_url.startswith(("http://", "https://")):
        raise CliError(f"the API URL must start with http:// or https://, not {api_url[:40]!r}")
    api_key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else "")
    if not api_key:
        raise CliError("no API key: pass --api-key or set CONTACTSYNC_API_KEY")
    return api_url, api_key


def _options(args: argparse.Namespace) -> Options:
    path: Path = args.file
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    api_url, api_key = api_endpoint(args)
    fmt = detect_format(path, args.format)
    layout = layout_of(path, fmt, upsert=args.match is not None)
    if layout.export is not None:
        print(f"contactsync: {path.name} is a {layout.export.name}: upserting by "
              f"{','.join(args.match or layout.export.match)}", file=sys.stderr)
    if layout.dropped:
        print(f"contactsync: columns left out (no field for them): {', '.join(layout.dropped)}",
              file=sys.stderr)
    return Options(
        path=path, fmt=fmt, batch_size=args.batch_size,
        api_url=api_url, api_key=api_key,
        rejects=args.rejects or path.with_name(path.name + ".rejected.jsonl"),
        state=path.with_name(path.name + ".import-state.json"), restart=args.restart,
        match=args.match or (layout.export.match if layout.export else None),
        export=layout.export,
    )


@dataclass
class Tally:
    """Counts of the whole import (earlier, interrupted runs included) and of this run."""

    read: int = 0
    queued: int = 0
    rejected: int = 0
    this_run: int = 0
    started: float = field(default_factory=time.monotonic)


class ImportState:
    """The progress file beside the input: the last line whose row went through."""

    def __init__(self, options: Options) -> None:
        self.path = options.state
        stat = options.path.stat()
        self.fingerprint = {
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": options.fmt,
        }
        self.last_line = 0
        self.run_id = uuid.uuid4().hex  # a new run's; a resumed run keeps the saved one

    def resume(self, tally: Tally) -> int:
        """Load an interrupted run's progress into `tally`; return the line it reached."""
        try:
            saved = json.loads(self.path.read_text())
            matches = saved["version"] == STATE_VERSION and saved["input"] == self.fingerprint
            counts = [int(saved[k]) for k in ("last_line", "read", "queued", "rejected")]
            run_id = str(saved["run_id"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):
            raise CliError(
                f"{self.path} is not a progress file of this version: delete it or pass --restart"
            ) from None
        if not matches and counts[0] == 0:
            return 0  # nothing went through: the changed file starts afresh, under new keys
        if not matches:
            raise CliError(
                f"the file changed since an interrupted import ({self.path}): "
                "pass --restart to import it from the first row"
            )
        self.last_line, tally.read, tally.queued, tally.rejected = counts
        self.run_id = run_id
        return self.last_line

    def save(self, last_line: int, tally: Tally) -> None:
        """Record that every row through `last_line` went through (atomically)."""
        self.last_line = last_line
        body = {"version": STATE_VERSION, "input": self.fingerprint, "run_id": self.run_id,
                "last_line": last_line,
                "read": tally.read, "queued": tally.queued, "rejected": tally.rejected}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(body))
        os.replace(temporary, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def batch_key(self, rows: list[Row]) -> str:
        """Return the `Idempotency-Key` of a batch: this run's, and the batch's place in it."""
        return batch_key(self.run_id, self.fingerprint, rows[0].line, len(rows))


def batch_key(run_id: str, fingerprint: dict[str, Any], first_line: int, count: int) -> str:
    """Derive a batch's key: the same file, run and rows give the same key, anything else not."""
    material = json.dumps([run_id, fingerprint, first_line, count], sort_keys=True)
    return "import-" + hashlib.sha256(material.encode()).hexdigest()[:40]


class Rejects:
    """The JSON-lines file of rejected rows, opened only when a row is rejected."""

    def __init__(self, path: Path, keep_through: int) -> None:
        self.path = path
        if keep_through == 0:
            path.unlink(missing_ok=True)
        elif path.exists():
            # Rows past the saved line are sent again, so their old rejections go.
            kept = [line for line in path.read_text().splitlines()
                    if _line_of(line) <= keep_through]
            path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        with self.path.open("a") as handle:
            for entry in sorted(entries, key=lambda e: int(e["line"])):
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _line_of(entry: str) -> float:
    try:
        return float(json.loads(entry)["line"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # not ours: dropped


Sleep = Callable[[float], None]


class Sender:
    """Post batches, retrying what is worth retrying, and return one result per item."""

    def __init__(self, client: httpx.Client, sleep: Sleep = time.sleep,
                 busy_attempts: int = MAX_BUSY_ATTEMPTS,
                 unreachable_attempts: int = MAX_UNREACHABLE_ATTEMPTS,
                 upsert: bool = False) -> None:
        self.client = client
        self.path, self.member = (UPSERT_PATH, "upserts") if upsert else (BATCH_PATH, "updates")
        self.sleep = sleep
        self.busy_attempts = busy_attempts
        self.unreachable_attempts = unreachable_attempts

    def send(self, items: list[dict[str, Any]], key: str | None = None) -> list[dict[str, Any]]:
        """Return the endpoint's result for each item, in order; `key` as `Idempotency-Key`."""
        busy = unreachable = 0
        headers = {"Idempotency-Key": key} if key else {}
        while True:
            try:
                response = self.client.post(self.path, json={self.member: items},
                                            headers=headers)
            except httpx.TransportError as exc:
                unreachable += 1
                if unreachable >= self.unreachable_attempts:
                    raise CliError(f"cannot reach {self.client.base_url} after {unreachable} "
                                   f"attempts: {_describe(exc)}") from None
                self.sleep(backoff(unreachable))
                continue
            if response.status_code == 202:
                return _results(response, len(items))
            if response.status_code == 413:
                return self._split(items, key)
            if response.status_code not in RETRYABLE:
                raise CliError(_refusal(response))
            busy += 1
            if busy >= self.busy_attempts:
                raise CliError(f"gave up after {busy} attempts: {_answer(response)}")
            wait = retry_after(response)
            self.sleep(wait if wait is not None else backoff(busy))

    def _split(self, items: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
        if len(items) == 1:
            error = {"code": "PAYLOAD_TOO_LARGE", "message": "The row is too large to send.",
                     "details": {}}
            return [{"index": 0, "id": items[0].get("id"), "error": error}]
        middle = len(items) // 2
        # Each half is its own request, so its own key, derived the same way every time.
        first, second = (f"{key}.{half}" if key else None for half in (1, 2))
        return self.send(items[:middle], first) + self.send(items[middle:], second)


def backoff(attempt: int) -> float:
    """Return the pause before the next attempt: the service's backoff, at most 30 s."""
    return backoff_seconds(attempt - 1, 30.0)


def retry_after(response: httpx.Response) -> float | None:
    """Return the seconds a `Retry-After` header asks for (a number or an HTTP date)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_WAIT_SECONDS)


def _describe(exc: httpx.TransportError) -> str:
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


def _error_of(response: httpx.Response) -> dict[str, Any] | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error if isinstance(error, dict) else None


def _answer(response: httpx.Response) -> str:
    error = _error_of(response)
    if error is None:
        return f"HTTP {response.status_code} (not a contactsync answer: is the API URL right?)"
    return f"HTTP {response.status_code} {error.get('code')}: {error.get('message')}"


def _refusal(response: httpx.Response) -> str:
    if response.status_code in (401, 403):
        return f"the API refused the key: {_answer(response)}"
    return f"the API refused the batch: {_answer(response)}"


def _results(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    try:
        results = response.json()["data"]["results"]
    except (ValueError, KeyError, TypeError):
        results = None
    if not isinstance(results, list) or len(results) != count:
        raise CliError(f"unexpected answer from the batch endpoint: {response.text[:100]!r}")
    return results


@dataclass
class Chunk:
    """Rows to send together, the row errors among them, and the last line they cover."""

    rows: list[Row] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    last_line: int = 0


def chunks(items: Iterable[Row | RowError], after_line: int, size: int) -> Iterator[Chunk]:
    """Group the rows past `after_line` into chunks of at most `size` rows to send."""
    chunk = Chunk()
    for item in items:
        if item.line <= after_line:
            continue
        if isinstance(item, Row):
            chunk.rows.append(item)
        else:
            chunk.errors.append(item)
        chunk.last_line = item.line
        if len(chunk.rows) == size:
            yield chunk
            chunk = Chunk()
    if chunk.last_line:
        yield chunk


def _upserts(chunk: Chunk, options: Options) -> Chunk:
    """Turn a chunk's rows into upsert items; a row with no identity to match becomes an error."""
    assert options.match is not None
    source = options.export.source if options.export else None
    out = Chunk(errors=list(chunk.errors), last_line=chunk.last_line)
    for row in chunk.rows:
        item = upsert_item(row, options.match, source)
        if isinstance(item, Row):
            out.rows.append(item)
        else:
            out.errors.append(item)
    return out


def _send_chunk(sender: Sender, chunk: Chunk, tally: Tally,
                key_of: Callable[[list[Row]], str]) -> list[dict[str, Any]]:
    """Send one chunk; count it; return its rejections."""
    rejected = [{"line": e.line, "id": e.id, "error": e.error()} for e in chunk.errors]
    results = (sender.send([row.update for row in chunk.rows], key_of(chunk.rows))
               if chunk.rows else [])
    for row, result in zip(chunk.rows, results, strict=True):
        if "error" in result:
            rejected.append(
                {"line": row.line, "id": row.update.get("id"), "error": result["error"]}
            )
    tally.read += len(chunk.rows) + len(chunk.errors)
    tally.this_run += len(chunk.rows) + len(chunk.errors)
    tally.rejected += len(rejected)
    tally.queued += len(chunk.rows) + len(chunk.errors) - len(rejected)
    return rejected


def _count_lines(path: Path) -> int:
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("importing"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rows]} rows, {task.fields[rate]} rows/s"), TimeRemainingColumn(),
        disable=not enabled,
    )


def run(args: argparse.Namespace) -> int:
    """Import the file; exit 0 when every row was queued, 1 when some were rejected."""
    options = _options(args)
    state, tally = ImportState(options), Tally()
    resumed_after = 0 if options.restart else state.resume(tally)
    # The run id is on disk before the first batch goes, so a batch sent by a run interrupted
    # before its first save is sent again under the same key.
    state.save(resumed_after, tally)
    rejects = Rejects(options.rejects, keep_through=resumed_after)
    headers = {"X-API-Key": options.api_key, "User-Agent": "contactsync-import"}
    timeout = httpx.Timeout(60.0, connect=10.0)
    with httpx.Client(base_url=options.api_url, headers=headers, timeout=timeout) as client, \
            _progress(sys.stdout.isatty()) as progress:
        bar = progress.add_task("import", total=_count_lines(options.path),
                                completed=resumed_after, rows=0, rate=0)
        upsert = options.match is not None
        sender = Sender(client, upsert=upsert)
        try:
            items = read_items(options.path, options.fmt, upsert)
            for chunk in chunks(items, resumed_after, options.batch_size):
                if upsert:
                    chunk = _upserts(chunk, options)
                rejects.write(_send_chunk(sender, chunk, tally, state.batch_key))
                state.save(chunk.last_line, tally)
                elapsed = max(time.monotonic() - tally.started, 1e-9)
                progress.update(bar, completed=chunk.last_line, rows=tally.this_run,
                                rate=int(tally.this_run / elapsed))
        except KeyboardInterrupt:
            print(f"contactsync: interrupted; {_resume_hint(state)}", file=sys.stderr)
            return 130
        except CliError as exc:
            if state.last_line:
                raise CliError(f"{exc} ({_resume_hint(state)})") from None
            raise
    state.clear()
    _summary(options, tally, resumed_after)
    return 1 if tally.rejected else 0


def _resume_hint(state: ImportState) -> str:
    if not state.last_line:
        return "no batch had gone through"
    return f"rows through line {state.last_line} went through; run the same command to resume"


def _summary(options: Options, tally: Tally, resumed_after: int) -> None:
    elapsed = time.monotonic() - tally.started
    rate = tally.this_run / elapsed if elapsed > 0 else 0.0
    print(f"imported {options.path.name}: {tally.read} rows read, {tally.queued} queued, "
          f"{tally.rejected} rejected")
    print(f"this run: {tally.this_run} rows in {elapsed:.1f} s ({rate:.0f} rows/s)"
          + (f", resumed after line {resumed_after}" if resumed_after else ""))
    if tally.rejected:
        print(f"{tally.rejected} rows were rejected: see {options.rejects}")
    else:
        print("every row was queued")
