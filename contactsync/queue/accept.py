"""Accept updates into the queue: sequence numbers, idempotency, bodies and task messages.

One flush costs one Redis round trip whatever its size: a Lua script that spends the
rate-limit tokens, reserves the idempotency keys, holds each account to its backlog limit,
allocates the sequence numbers, stores the bodies and pushes the task messages, all or
nothing. That is what keeps the gateway's
request path cheap.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import count
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contactsync import names, scripts
from contactsync.queue.wire import queue_list_key, task_messages
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate

log = logging.getLogger("contactsync.gateway")

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
class RateLimit:
    """The rate-limit bucket a submission spends a token from: its key, rate and size."""

    bucket_key: str
    rate: int
    burst: int


@dataclass(frozen=True)
class BucketState:
    """A bucket's answer to one request: whether it had a token, whole tokens left, and
    microseconds until it is full and until it holds a token."""

    allowed: bool
    remaining: int
    full_in_us: int
    wait_us: int


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
    rate_limit: RateLimit | None = None
    # The submissions of one batch request share it; the batch's Idempotency-Key rides on its
    # first, so the script reserves the key with the batch's accept, and a key seen before
    # answers the whole batch.
    batch_id: str | None = None
    match_on: list[str] | None = None  # an upsert's identities (`AcceptedUpdate.match_on`)


def _unsequenced(submission: Submission, received_at: str) -> AcceptedUpdate:
    """The update a submission becomes, before Redis gives it its sequence number."""
    return AcceptedUpdate(
        update_id=submission.update_id, account_id=submission.account_id,
        contact_id=submission.contact_id, seq=0, received_at=received_at,
        patch=submission.patch, queue=submission.queue, reply_to=submission.reply_to,
        match_on=submission.match_on,
    )


@dataclass(frozen=True)
class Accepted:
    update: AcceptedUpdate
    bucket: BucketState | None = None  # when the submission spent a rate-limit token


@dataclass(frozen=True)
class Replayed:
    """The idempotency key was seen before: its stored record decides the answer."""

    record: dict[str, Any]


@dataclass(frozen=True)
class RateRefused:
    """The submission's rate-limit bucket had no token: nothing was queued."""

    bucket: BucketState


@dataclass(frozen=True)
class BacklogRefused:
    """Its account has as many updates waiting as it may: nothing was queued."""


AcceptOutcome = Accepted | Replayed | RateRefused | BacklogRefused

NO_ACCOUNT_LIMIT = 2**53  # what the accept script's numbers (doubles) hold exactly


def idempotency_record(
    fingerprint: str, update_id: str | None, response: dict[str, Any] | None
) -> bytes:
    """Return the stored form of an idempotency key: in flight until it has a response."""
    return orjson.dumps({"fingerprint": fingerprint, "update_id": update_id, "response": response})


class Enqueuer:
    """Turn submissions into accepted updates on the queue."""

    def __init__(
        self, redis: Redis, *, idempotency_ttl: int, max_batch: int, origin: str,
        account_limit: Callable[[], int] = lambda: NO_ACCOUNT_LIMIT,
    ) -> None:
        self._redis = redis
        self._account_limit = account_limit
        self._script = redis.register_script(scripts.ACCEPT)
        self._idempotency_ttl = idempotency_ttl
        self._max_batch = max_batch
        self._origin = origin

    async def accept(self, submissions: Sequence[Submission]) -> list[AcceptOutcome]:
        """Queue every submission; return, in order, what became of each.

        One script call when every rate-limited submission gets its token, no idempotency
        key was seen before and no account goes over its backlog limit (`account_limit`, read
        once per flush); each call that finds otherwise answers those submissions and sends
        the others again.
        """
        received_at = isoformat(utcnow())
        outcomes: list[AcceptOutcome | None] = [None] * len(submissions)
        waiting = list(range(len(submissions)))
        while waiting:
            updates = [_unsequenced(submissions[i], received_at) for i in waiting]
            reply = await self._accept(updates, [submissions[i] for i in waiting])
            if int(reply[0]):
                states = (int(v) for v in reply[1:])
                for index, update, seq in zip(waiting, updates, count(int(reply[0])),
                                              strict=False):
                    bucket = None
                    if submissions[index].rate_limit:
                        bucket = BucketState(True, next(states), next(states), next(states))
                    outcomes[index] = Accepted(replace(update, seq=seq), bucket)
                break
            if reply[1] == b"rate":
                limited = [i for i in waiting if submissions[i].rate_limit]
                for at in range(2, len(reply), 4):
                    left, full_in, wait = (int(v) for v in reply[at + 1 : at + 4])
                    outcomes[limited[int(reply[at]) - 1]] = RateRefused(
                        BucketState(False, left, full_in, wait)
                    )
            elif reply[1] == b"backlog":
                for at in range(2, len(reply)):
                    outcomes[waiting[int(reply[at]) - 1]] = BacklogRefused()
            else:
                with_key = [i for i in waiting if submissions[i].idempotency]
                by_batch: dict[str | None, AcceptOutcome] = {}
                for at in range(2, len(reply), 2):
                    index = with_key[int(reply[at]) - 1]
                    replayed = outcomes[index] = Replayed(orjson.loads(reply[at + 1]))
                    by_batch[submissions[index].batch_id] = replayed
                by_batch.pop(None, None)
                for i in waiting:
                    if outcomes[i] is None:
                        outcomes[i] = by_batch.get(submissions[i].batch_id)
            waiting = [i for i in waiting if outcomes[i] is None]
        return [o for o in outcomes if o is not None]

    async def _accept(self, updates: list[AcceptedUpdate], submissions: list[Submission]) -> Any:
        limits = [s.rate_limit for s in submissions if s.rate_limit]
        idem_keys: list[str] = []
        idem_records: list[bytes] = []
        for sub in submissions:
            if sub.idempotency:
                idem_keys.append(names.idempotency_key(sub.account_id, sub.idempotency.key_digest))
                idem_records.append(
                    idempotency_record(sub.idempotency.fingerprint, sub.update_id, None)
                )
        messages = self.task_messages(updates)
        accounts = list(dict.fromkeys(u.account_id for u in updates))
        number = {account: j for j, account in enumerate(accounts, 1)}
        return await self._script(
            keys=[
                names.SEQUENCE_KEY, names.PENDING_KEY, *[limit.bucket_key for limit in limits],
                *idem_keys, *[names.update_body_key(u.update_id) for u in updates],
                *[queue_list_key(queue) for queue, _ in messages], names.BACKLOG_ACCOUNTS_KEY,
                *[names.account_pending_key(account) for account in accounts],
            ],
            args=[
                len(updates), IN_FLIGHT_SECONDS, len(idem_keys), len(messages), len(limits),
                *[v for limit in limits for v in (limit.rate, limit.burst)], *idem_records,
                *[u.update_id for u in updates], *[u.body_tail() for u in updates],
                *[message for _, message in messages],
                len(accounts), self._account_limit(), *accounts,
                *[number[u.account_id] for u in updates],
            ],
        )

    def task_messages(self, updates: list[AcceptedUpdate]) -> list[tuple[str, bytes]]:
        """Return (queue, message) pairs carrying these updates, at most `max_batch` each."""
        return task_messages(updates, self._max_batch, self._origin)

    async def idempotency_answer(
        self, account_id: str, idem: Idempotency
    ) -> dict[str, Any] | None:
        """Return the record stored under an idempotency key, if the key was seen before."""
        raw: bytes | None = await self._redis.get(  # type: ignore[assignment]
            names.idempotency_key(account_id, idem.key_digest)
        )
        return None if raw is None else orjson.loads(raw)

    async def keep_first_answer(
        self, account_id: str, idem: Idempotency, response: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Store an answer that queued nothing under a key not seen before, in one command.

        Return the record already there instead, when the key was seen before (stored or in
        flight): that record is the answer, and nothing is written.
        """
        raw: bytes | None = await self._redis.set(  # type: ignore[assignment]
            names.idempotency_key(account_id, idem.key_digest),
            idempotency_record(idem.fingerprint, None, response),
            ex=self._idempotency_ttl, nx=True, get=True,
        )
        return None if raw is None else orjson.loads(raw)

    async def finish_idempotency(
        self, account_id: str, idem: Idempotency, update_id: str, response: dict[str, Any]
    ) -> None:
        """Store the answer given under an idempotency key, for the next 24 hours.

        Best effort: the update is already queued, so a Redis failure here must not turn its
        2xx into a 503 (a client would send it again). The key then stays in flight until its
        marker expires (`IN_FLIGHT_SECONDS`): a retry meanwhile gets 409, later a new update.
        """
        try:
            await self._redis.set(
                names.idempotency_key(account_id, idem.key_digest),
                idempotency_record(idem.fingerprint, update_id, response),
                ex=self._idempotency_ttl,
            )
        except RedisError as exc:
            log.warning("could not store the answer of update %s under its idempotency key "
                        "(%s)", update_id, type(exc).__name__)

