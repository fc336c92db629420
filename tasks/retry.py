"""The retry policy, in one place: what is transient, and how long to wait."""

from __future__ import annotations

import random

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError

from contactsync.errors import TransientFailure

# Serialization failure, deadlock, lock timeout, and the connection and shutdown classes; and a
# unique violation, which is what a concurrent delivery of the same update meets when no row
# lock serialised the two (a contact that does not exist): the retry then finds its record.
# The identity index's unique violation is re-checked at once first (tasks/applying.py), and its
# retry ends `conflict`, since the look-up then sees the committed holder.
_TRANSIENT_SQLSTATES = {"23505", "40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"}
_TRANSIENT_SQLSTATE_CLASSES = ("08",)
# The longest a worker's statement waits for a PostgreSQL row lock; past it, the wait fails as
# 55P03 (lock timeout) and is retried like any transient failure. Applying a batch holds its
# locks for milliseconds, so only a stuck transaction elsewhere waits this long.
LOCK_TIMEOUT_MS = 3000


def is_transient(exc: BaseException) -> bool:
    """Tell whether retrying later could succeed."""
    if isinstance(exc, TransientFailure | RedisConnectionError | RedisTimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate:
            return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(
                _TRANSIENT_SQLSTATE_CLASSES
            )
        # SQLite reports a busy or locked database, and psycopg a dropped connection, here.
        return isinstance(exc, OperationalError)
    return False


def backoff_seconds(retries: int, cap: float, base: float = 0.5) -> float:
    """Return the wait before retry number `retries + 1`: exponential from `base`, capped at
    `cap`, jittered over its upper half. The apply task, the relay and the importer all wait
    by this."""
    ceiling: float = min(cap, base * 2.0 ** min(retries, 32))
    return ceiling / 2 + random.uniform(0, ceiling / 2)
