"""kombu's Redis transport, made to drop a message it cannot decode instead of dying.

Stock kombu lets a queue entry that is not a JSON envelope (or whose body is not valid
base64) escape from its event loop, and the worker stops with an unrecoverable error. Such
an entry was not written by our gateway or by Celery; it is logged and skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis

log = logging.getLogger("contactsync.worker")


class Channel(redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            delivered: bool = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
            return delivered
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # JSON, base64 and UTF-8 errors are ValueErrors; a missing part is a Key/TypeError.
            log.error("dropped a queue message that is not a valid task message: %s",
                      type(exc).__name__)
            return True


class Transport(redis.Transport):
    Channel = Channel
