"""kombu's Redis transport, made to survive two things stock kombu stops the worker for.

A queue entry that is not a JSON envelope (or whose body is not valid base64) escapes from
kombu's event loop, and the worker stops with an unrecoverable error. Such an entry was not
written by our gateway or by Celery; it is logged and skipped (`Channel`).

A connection lost while the worker holds messages: see `QoS`.

It also keeps a consuming channel's heartbeat and its claims, so that the messages of a worker
that died come back within seconds (`worker/liveness.py`).

It subclasses kombu's transport and uses its internals: after a kombu upgrade, check this
module and `worker/liveness.py` beside the wire format (`contactsync/queue/wire.py`). It stays
in `worker/` because it starts the heartbeat, which is worker-side (the core imports neither).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.json import dumps

from worker.liveness import Heartbeat

log = logging.getLogger("contactsync.worker")


class QoS(redis.QoS):
    """Unacknowledged messages of a channel whose connection may have been lost.

    After a lost connection, Celery collects the connection (its transport loses its client)
    and closes the channel, which restores the messages it holds; tasks still running finish
    later and acknowledge on that same channel. Each of these needs a Redis client the channel
    can no longer make: stock kombu raised AttributeError and the worker stopped for good. The
    messages are safe in `unacked`, claimed by this channel's consumer, whose heartbeat stops
    as the channel closes: the other workers bring them back within seconds (a second delivery
    is harmless). Leave them there, and keep the worker running.
    """

    def append(self, message: Any, delivery_tag: str) -> None:
        heartbeat = self.channel.heartbeat
        if heartbeat is None:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        # kombu's own bookkeeping, with the claim in the same transaction: a message in
        # `unacked` is always claimed by a consumer that heartbeats.
        delivery = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.sadd(heartbeat.claims_key, delivery_tag) \
                .zadd(self.unacked_index_key, {delivery_tag: time.time()}) \
                .hset(self.unacked_key, delivery_tag,
                      dumps([message._raw, delivery["exchange"],  # type: ignore[no-untyped-call]
                             delivery["routing_key"]])) \
                .execute()
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        # Acknowledged, rejected or restored: no longer this consumer's to hold.
        pipe = super()._remove_from_indices(delivery_tag, pipe)  # type: ignore[no-untyped-call]
        heartbeat = self.channel.heartbeat
        return pipe.srem(heartbeat.claims_key, delivery_tag) if heartbeat else pipe

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
    from_transport_options = (  # type: ignore[assignment]
        *redis.Channel.from_transport_options, "worker_heartbeat", "worker_dead_after",
    )
    worker_heartbeat = 2.0
    worker_dead_after = 8.0
    heartbeat: Heartbeat | None = None

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        if not no_ack and self.heartbeat is None:  # the task consumer (not remote control)
            self.heartbeat = Heartbeat(self, self.worker_heartbeat, self.worker_dead_after)
            self.heartbeat.start()
        return super().basic_consume(queue, *args, **kwargs)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        # Silent from here: what kombu cannot restore while closing (its connection lost) is
        # restored by the other workers within seconds.
        if self.heartbeat is not None:
            self.heartbeat.stop()
        super().close()  # type: ignore[no-untyped-call]

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
