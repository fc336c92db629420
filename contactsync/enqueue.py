"""Accept updates into the queue: sequence numbers, idempotency, bodies and task messages.

One flush costs two Redis round trips whatever its size: a Lua script that allocates the
sequence numbers and reserves idempotency keys, then one MULTI that stores the bodies and
pushes the task messages. That is what keeps the gateway's request path cheap.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis

from contactsync import names
from contactsync.celery_message import build_task_message, queue_list_key
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate, task_argsrepr

ACCEPT_SCRIPT = resources.files("contactsync").joinpath("lua/accept.lua").read_text()
IN_FLIGHT_SECONDS = 120


@dataclass(frozen=True)
class Idempotency:
    """A request's Idempotency-Key, as a digest, with the fingerprint of what it asked."""

    key_digest: str
    fingerprint: str

    @classmethod
    def of(cls, key: str, method: str, path: str, body: Any) -> Idempotency:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        canonical = orjson.dumps([method, path, body], option=orjson.OPT_SORT_KEYS)
        return cls(digest, hashlib.sha256(canonical).hexdigest())


@dataclass(frozen=True)
class Submission:
    """An update the gateway has validated and wants queued."""

    update_id: str
    account_id: str
    contact_id: str
    patch: dict[str, Any]
    queue: str
    idempotency: Idempotency | None = None
    reply_to: str | None = None


@dataclass(frozen=True)
class Accepted:
    update: AcceptedUpdate


@dataclass(frozen=True)
class Replayed:
    """The idempotency key was seen before: its stored record decides the answer."""

    record: dict[str, Any]


Outcome = Accepted | Replayed


def idempotency_record(
    fingerprint: str, update_id: str, response: dict[str, Any] | None
) -> bytes:
    """Return the stored form of an idempotency key: in flight until it has a response."""
    return orjson.dumps({"fingerprint": fingerprint, "update_id": update_id, "response": response})


def task_message(queue: str, updates: list[AcceptedUpdate], origin: str) -> bytes:
    """Return one apply task message naming these updates by id only."""
    return build_task_message(
        task_name=names.APPLY_TASK,
        task_id=str(uuid.uuid4()),
        args=[[u.update_id for u in updates]],
        kwargs={},
        queue=queue,
        argsrepr=task_argsrepr(updates),
        kwargsrepr="{}",
        origin=origin,
    )


class Enqueuer:
    """Turn submissions into accepted updates on the queue."""

    def __init__(self, redis: Redis, *, idempotency_ttl: int, max_batch: int, origin: str) -> None:
        self._redis = redis
        self._script = redis.register_script(ACCEPT_SCRIPT)
        self._idempotency_ttl = idempotency_ttl
        self._max_batch = max_batch
        self._origin = origin

    async def accept(self, submissions: Sequence[Submission]) -> list[Outcome]:
        """Queue every submission; return, in order, what became of each."""
        update_ids = [s.update_id for s in submissions]
        idem_keys: list[str] = []
        idem_args: list[bytes] = []
        for sub, update_id in zip(submissions, update_ids, strict=True):
            if sub.idempotency:
                idem_keys.append(names.idempotency_key(sub.account_id, sub.idempotency.key_digest))
                idem_args.append(idempotency_record(sub.idempotency.fingerprint, update_id, None))
        reply = await self._script(
            keys=[names.SEQUENCE_KEY, *idem_keys],
            args=[len(submissions), IN_FLIGHT_SECONDS, *idem_args],
        )
        first_seq = int(reply[0])
        idem_replies = iter(reply[1:])
        received_at = isoformat(utcnow())
        outcomes: list[Outcome] = []
        for index, (sub, update_id) in enumerate(zip(submissions, update_ids, strict=True)):
            existing = next(idem_replies) if sub.idempotency else b""
            if existing:
                outcomes.append(Replayed(orjson.loads(existing)))
                continue
            outcomes.append(Accepted(AcceptedUpdate(
                update_id=update_id, account_id=sub.account_id, contact_id=sub.contact_id,
                seq=first_seq + index, received_at=received_at, patch=sub.patch,
                queue=sub.queue, reply_to=sub.reply_to,
            )))
        accepted = [o.update for o in outcomes if isinstance(o, Accepted)]
        if accepted:
            await self._store_and_push(accepted)
        return outcomes

    async def _store_and_push(self, updates: list[AcceptedUpdate]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for update in updates:
                pipe.set(names.update_body_key(update.update_id), update.to_json())
            for queue, message in self.task_messages(updates):
                pipe.lpush(queue_list_key(queue), message)
            await pipe.execute()

    def task_messages(self, updates: list[AcceptedUpdate]) -> list[tuple[str, bytes]]:
        """Return (queue, message) pairs carrying these updates, at most `max_batch` each."""
        by_queue: dict[str, list[AcceptedUpdate]] = {}
        for update in updates:
            by_queue.setdefault(update.queue, []).append(update)
        messages = []
        for queue, group in by_queue.items():
            for start in range(0, len(group), self._max_batch):
                chunk = group[start : start + self._max_batch]
                messages.append((queue, task_message(queue, chunk, self._origin)))
        return messages

    async def finish_idempotency(
        self, account_id: str, idem: Idempotency, update_id: str, response: dict[str, Any]
    ) -> None:
        """Store the answer given under an idempotency key, for the next 24 hours."""
        await self._redis.set(
            names.idempotency_key(account_id, idem.key_digest),
            idempotency_record(idem.fingerprint, update_id, response),
            ex=self._idempotency_ttl,
        )
