"""Keep each account's count of waiting updates true, whatever a dead worker left behind.

The accept script adds an update to its account's sorted set together with the pending set;
the worker removes it from both once it is finished. Removal is idempotent, but it is a
separate step: a worker killed between the two, a body found unreadable, or a lost task
message found already finished, leaves a member that nothing would remove. Each sweep reads
an account's set a page at a time (ZSCAN), asks the pending set which of the page are still
there (ZMSCORE), and drops the others in a script that checks each again (atomic): what is
in an account's set and still pending stays, and nothing is added. One ZINTERSTORE of the
whole set did the same but held Redis for all of it, in front of every gateway's accept:
68 ms at 100,000 waiting updates (the most `CONTACTSYNC_MAX_BACKLOG` lets in), every sweep
interval (`python -m bench.backlog_sweep`, docs/benchmarks.md).
"""

from __future__ import annotations

from redis import Redis

from contactsync import names

PAGE = 1000  # members read and checked a call
RECONCILE_EVERY_SECONDS = 60  # one relay reconciles at most this often (a lock key)

# The members of ARGV no longer pending leave the account's set; returns how many left.
_DROP_FINISHED = """
local dropped = 0
for _, member in ipairs(ARGV) do
  if not redis.call('ZSCORE', KEYS[2], member) then
    dropped = dropped + redis.call('ZREM', KEYS[1], member)
  end
end
return dropped
"""
# Drop an account from the registry only if its set is still empty (an update accepted since
# the sweep re-creates both, atomically, in the accept script).
_FORGET_IF_EMPTY = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
"""


def reconcile(redis: Redis) -> int:
    """Drop from every account's set of waiting updates those no longer pending; return how
    many were dropped."""
    registry: set[bytes] = redis.smembers(names.BACKLOG_ACCOUNTS_KEY)  # type: ignore[assignment]
    drop_finished = redis.register_script(_DROP_FINISHED)
    forget = redis.register_script(_FORGET_IF_EMPTY)
    dropped = 0
    for account in sorted(a.decode() for a in registry):
        key = names.account_pending_key(account)
        cursor = 0
        while True:  # ZSCAN: a member may come twice, and dropping it twice drops nothing
            cursor, page = redis.zscan(key, cursor, count=PAGE)
            read = [member for member, _ in page]
            # redis-py types members as str; the bytes ZSCAN gives are sent as they are.
            scores = redis.zmscore(names.PENDING_KEY, read) if read else []  # type: ignore[arg-type]
            # Checked again in the script, with the drop: it may have been queued again since.
            gone = [m for m, score in zip(read, scores, strict=True) if score is None]
            if gone:
                dropped += int(drop_finished(keys=[key, names.PENDING_KEY], args=gone))
            if cursor == 0:
                break
        if redis.zcard(key) == 0:
            forget(keys=[names.BACKLOG_ACCOUNTS_KEY, key], args=[account])
    return dropped
