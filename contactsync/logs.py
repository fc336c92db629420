"""Logging: one JSON object per line for machines, plain text for a person at a terminal.

Only the fields named in `SAFE_FIELDS` leave a record's `extra`: ids, statuses, durations.
Field values, emails, phones and keys are never logged.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from contactsync.settings import Settings

SAFE_FIELDS = (
    "update_id", "update_ids", "contact_id", "account_id", "status", "statuses", "count",
    "method", "route", "http_status", "duration_ms", "apply_ms", "lag_ms", "queue", "retries",
    "changed_fields", "published",
)


# Loggers that bring handlers of their own (uvicorn's): their records go to ours instead.
ADOPTED = ("uvicorn", "uvicorn.error")
# uvicorn's access log stays off: the gateway logs each request itself, without the client's
# address or the raw path (ids in a path are unbounded, and a path could carry anything).
SILENCED = ("uvicorn.access",)


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line."""

    # The second's text, made once a second: strftime is a third of a line's cost.
    _second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            # UTC whatever the host's zone: the timestamp says Z.
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in SAFE_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: an exception's text can quote a statement's parameters.
            entry["exc_type"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Render a record as one readable line, with its safe fields after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.exc_text = None
        saved = record.exc_info
        record.exc_info = None  # see JsonFormatter: no exception text
        try:
            line = super().format(record)
        finally:
            record.exc_info = saved
        extras = [f"{n}={record.__dict__[n]}" for n in SAFE_FIELDS if n in record.__dict__]
        if saved and saved[0] is not None:
            extras.append(f"exc_type={saved[0].__name__}")
        return f"{line} {' '.join(extras)}" if extras else line


def configure(settings: Settings, *, json_lines: bool | None = None) -> None:
    """Send every log record to stderr, as JSON unless a person is watching a terminal."""
    if json_lines is None:
        json_lines = settings.log_format == "json" or (
            settings.log_format == "auto" and not sys.stderr.isatty()
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ADOPTED:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    for name in SILENCED:
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = False
