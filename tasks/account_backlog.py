"""Keep each account's count of waiting updates true, whatever a dead worker left behind.

The accept script adds an update to its account's sorted set together with the pending set;
the worker removes it from both once it is finished. Removal is idempotent, but it is a
separate step: a worker killed between the two, a body found unreadable, or a lost task
message found already finished, leaves a member that nothing would remove. Rebuilding each set
as its intersection with the pending set (one ZINTERSTORE, atomic) drops exactly those, and
can never add one: what is in an account's set and still pending stays.
"""

from __future__ import annotations

from redis import Redis

from contactsync import names

# Drop an account from the registry only if its set is still empty (an update accepted since
# the rebuild re-creates both, atomically, in the accept script).
_FORGET_IF_EMPTY = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
"""


def reconcile(redis: Redis) -> int:
    """Rebuild every account's set of waiting updates from the pending set; return how many
    entries were dropped."""
    members: set[bytes] = redis.smembers(names.BACKLOG_ACCOUNTS_KEY)  # type: ignore[assignment]
    accounts = sorted(a.decode() for a in members)
    if not accounts:
        return 0
    keys = [names.account_pending_key(a) for a in accounts]
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zcard(key)
        for key in keys:
            # Weight 0 for the pending set: the account's own scores are kept.
            pipe.zinterstore(key, {key: 1, names.PENDING_KEY: 0})
        replies = pipe.execute()
    before, after = replies[: len(keys)], replies[len(keys) :]
    forget = redis.register_script(_FORGET_IF_EMPTY)
    for account, key, left in zip(accounts, keys, after, strict=True):
        if left == 0:
            forget(keys=[names.BACKLOG_ACCOUNTS_KEY, key], args=[account])
    return sum(max(0, int(b) - int(a)) for b, a in zip(before, after, strict=True))
