"""Heartbeats of live consumers, and a dead consumer's messages back in their queue in seconds.

kombu keeps a message a consumer took in its `unacked` hash until it is acknowledged, and
gives it back only after the visibility timeout (300 s): ample for the longest task, far too
long for a worker that died. So each consuming channel also says it is alive every
`interval` seconds (`contactsync:workers`, a sorted set), and records each delivery tag it
takes in a claims set of its own (`worker/transport.py`). With every heartbeat, each consumer
looks for consumers silent for `dead_after` seconds and queues what they claimed again, as
dramatiq's Redis broker recovers the messages of a dead worker. The heartbeat comes from a
thread of its own, so a task that takes minutes (a slow database) still has a live
consumer's heartbeat behind it and is never taken away. A consumer found dead that was only
stalled loses its messages to another worker: applying an update twice is harmless (its
update-id record).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Any

from kombu.utils.json import dumps, loads
from redis import Redis

from contactsync import names, scripts
from contactsync.queue.requeue import requeue_orphans

log = logging.getLogger("contactsync.worker")


class Heartbeat:
    """One consuming channel's heartbeat, and its sweep for dead consumers."""

    def __init__(self, channel: Any, interval: float, dead_after: float) -> None:
        self.consumer_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.claims_key = names.claims_key(self.consumer_id)
        self.interval = interval
        self.dead_after = dead_after
        self._channel = channel
        self._client: Redis = channel._create_client()
        self._beat = self._client.register_script(scripts.HEARTBEAT)
        self._restore = self._client.register_script(scripts.RESTORE_CLAIM)
        self._forget = self._client.register_script(scripts.FORGET_CONSUMER)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Say it is alive before taking any message, then keep saying so."""
        self._pass()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._pass()

    def _pass(self) -> None:
        try:
            dead = self._beat(keys=[names.WORKERS_KEY], args=[self.consumer_id, self.dead_after])
            for consumer in dead:
                self.recover(consumer.decode())
        except Exception as exc:  # Redis is away: kombu says so; this consumer tries again
            log.warning("worker heartbeat failed (%s); will retry", type(exc).__name__)

    def recover(self, consumer: str) -> int:
        """Queue again every message `consumer` (found dead) holds; return how many."""
        if consumer == self.consumer_id:
            return 0  # this very thread was stalled: what it holds is being worked on
        claims = names.claims_key(consumer)
        tags: list[bytes] = sorted(self._client.smembers(claims))  # type: ignore[arg-type]
        entries: list[bytes | None] = (
            self._client.hmget(self._channel.unacked_key, tags) if tags else []  # type: ignore[assignment]
        )
        restored = 0
        for tag, entry in zip(tags, entries, strict=True):
            lists, message = self._destination(entry) if entry else ([], "")
            restored += int(self._restore(
                keys=[names.WORKERS_KEY, self._channel.unacked_key,
                      self._channel.unacked_index_key, claims, *lists],
                args=[consumer, self.dead_after, tag, entry or b"", message],
            ))
        if restored:
            log.warning("worker consumer %s stopped its heartbeat over %.0f s ago; queued the "
                        "%d message(s) it held again", consumer, self.dead_after, restored)
        if self._forget(keys=[names.WORKERS_KEY, claims], args=[consumer, self.dead_after]):
            self._requeue_vanished(consumer)  # once per death: only one sweeper forgets it
        return restored

    def _requeue_vanished(self, consumer: str) -> None:
        """Queue again the updates of a message the dead consumer took off its queue but had
        not yet recorded in `unacked` (killed between kombu's BRPOP and its bookkeeping, or
        with the popped message still unread in its socket): no claim names it. Each such
        update is pending, named by no message, and was accepted before the death, over
        `dead_after - interval` seconds ago."""
        update_ids = requeue_orphans(
            self._client, older_than_seconds=self.dead_after - self.interval,
            origin=f"heartbeat@{self.consumer_id}",
        )
        if update_ids:
            log.warning("queued %d updates again, their task message was lost with worker "
                        "consumer %s: %s", len(update_ids), consumer, ", ".join(update_ids[:20]))

    def _destination(self, entry: bytes) -> tuple[list[str], str]:
        """Return the lists an `unacked` entry goes back to, and the message to put there,
        as kombu's own restore does (`Channel._do_restore_message`)."""
        try:
            payload, exchange, routing_key = loads(entry)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError):
            # kombu's restore drops such an entry too; nothing could ever run it.
            log.error("dropped an unacknowledged entry that is not a valid message")
            return [], ""
        try:
            payload["headers"]["redelivered"] = True
            payload["properties"]["delivery_info"]["redelivered"] = True
        except (KeyError, TypeError):
            pass
        channel = self._channel
        priority = channel._get_message_priority(payload, reverse=False)
        lists = [channel._q_for_pri(queue, priority)
                 for queue in channel._lookup(exchange, routing_key)]
        return lists, dumps(payload)  # type: ignore[no-untyped-call]
