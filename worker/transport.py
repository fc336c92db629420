"""kombu's Redis transport, made to survive two things stock kombu stops the worker for.

A queue entry that is not a JSON envelope (or whose body is not valid base64) escapes from
kombu's event loop, and the worker stops with an unrecoverable error. Such an entry was not
written by our gateway or by Celery; it is logged and skipped (`Channel`).

A connection lost while the worker holds messages: see `QoS`.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis

log = logging.getLogger("contactsync.worker")


class QoS(redis.QoS):
    """Unacknowledged messages of a channel whose connection may have been lost.

    After a lost connection, Celery collects the connection (its transport loses its client)
    and closes the channel, which restores the messages it holds; tasks still running finish
    later and acknowledge on that same channel. Each of these needs a Redis client the channel
    can no longer make: stock kombu raised AttributeError and the worker stopped for good. The
    messages are safe in `unacked`, where the visibility timeout brings them back (a second
    delivery is harmless): leave them there, and keep the worker running.
    """

    def _orphaned(self, what: str) -> bool:
        connection = self.channel.connection
        if connection is not None and connection.client is not None:
            return False
        log.warning("connection to Redis lost: cannot %s; the message(s) come back after the "
                    "visibility timeout", what)
        return True

    def restore_unacked(self, client: Any = None) -> None:
        if client is None and self._orphaned(f"restore {len(self._delivered)} message(s)"):
            self._delivered.clear()
            return
        super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: str) -> None:
        if not self._orphaned("acknowledge a message"):
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if not self._orphaned("reject a message"):
            super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]


class Channel(redis.Channel):
    QoS = QoS

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
