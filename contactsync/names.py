"""Every Redis key, queue and stream name the project uses, in one place."""

from __future__ import annotations

# Celery queue for single updates from PUT; its own list key in Redis.
UPDATES_QUEUE = "contacts.updates"
# Celery queue for batch updates and imports, so bulk work never starves single updates.
BULK_QUEUE = "contacts.bulk"
# Task that applies a group of accepted updates.
APPLY_TASK = "contactsync.apply_updates"
# Celery queue of webhook deliveries: its own workers, so a slow receiver never holds up updates.
WEBHOOKS_QUEUE = "webhooks"
# Task that sends a batch of one endpoint's claimed deliveries.
DELIVER_WEBHOOKS_TASK = "contactsync.deliver_webhooks"
# Lock key: one relay at a time prunes old webhook events and deliveries.
WEBHOOK_PRUNE_LOCK_KEY = "contactsync:webhooks:prune-lock"
# Version of the webhook endpoints: a new random value once an endpoint is created, changed,
# disabled, removed or its secret rotated. A relay trusts its cached list of endpoints while
# this reads as when it read the list (contactsync/webhook_fanout.py). Random, not a counter:
# a Redis that lost its data and counted again could come back to the version a relay holds.
WEBHOOK_ENDPOINTS_VERSION_KEY = "contactsync:webhooks:endpoints-version"

# Counter behind update sequence numbers (a floor of Redis server time in microseconds).
SEQUENCE_KEY = "contactsync:sequence"
# Prefix of the stored body of an accepted, not yet finished update (its fields, its sequence).
UPDATE_BODY_PREFIX = "contactsync:update:"
# Sorted set of the accepted updates not finished yet: member the update id, score the Redis
# time (microseconds) it was last queued. What finds an update whose task message was lost.
PENDING_KEY = "contactsync:pending"
# Prefix of one account's share of PENDING_KEY (same members and scores): its own backlog,
# counted and capped by the accept script. Removing a member is idempotent, and the relay
# rebuilds each from PENDING_KEY now and then, so a count cannot drift for good.
ACCOUNT_PENDING_PREFIX = "contactsync:pending:account:"
# Set of the account ids that may have an ACCOUNT_PENDING_PREFIX set (what the relay rebuilds).
BACKLOG_ACCOUNTS_KEY = "contactsync:pending:accounts"
# Lock key: one worker's relay at a time looks for pending updates that lost their message.
REQUEUE_LOCK_KEY = "contactsync:requeue-lock"
RECONCILE_LOCK_KEY = "contactsync:backlog-reconcile-lock"  # tasks/account_backlog.py
# Sorted set of the workers' consumers: member a consumer id, score the Redis time (seconds) of
# its last heartbeat. A consumer silent for too long is dead (worker/liveness.py).
WORKERS_KEY = "contactsync:workers"
# Prefix of a consumer's claims: the set of delivery tags it took and has not acknowledged.
CLAIMS_PREFIX = "contactsync:claims:"
# Prefix of idempotency records: contactsync:idem:{account_id}:{sha256 of the key}.
IDEMPOTENCY_PREFIX = "contactsync:idem:"
# Prefix of the pub/sub channel on which workers answer a gateway process waiting for results.
RESULTS_CHANNEL_PREFIX = "contactsync:results:"

# Prefix of an API key's token bucket (a hash: tokens left, last refill in microseconds).
RATE_LIMIT_PREFIX = "contactsync:ratelimit:"
# Prefix of an API key's update bucket: one token per batch item.
UPDATE_RATE_LIMIT_PREFIX = "contactsync:updatelimit:"


def update_body_key(update_id: str) -> str:
    """Return the Redis key holding an accepted update's body."""
    return UPDATE_BODY_PREFIX + update_id


def idempotency_key(account_id: str, key_digest: str) -> str:
    """Return the Redis key of one account's idempotency record."""
    return f"{IDEMPOTENCY_PREFIX}{account_id}:{key_digest}"


def results_channel(instance_id: str) -> str:
    """Return the pub/sub channel of one waiting gateway process."""
    return RESULTS_CHANNEL_PREFIX + instance_id


def rate_limit_key(key_id: str) -> str:
    """Return the Redis key of one API key's token bucket."""
    return RATE_LIMIT_PREFIX + key_id


def update_rate_limit_key(key_id: str) -> str:
    """Return the Redis key of one API key's update bucket (batch items)."""
    return UPDATE_RATE_LIMIT_PREFIX + key_id


def account_pending_key(account_id: str) -> str:
    """Return the Redis key of the updates one account has waiting (a sorted set)."""
    return ACCOUNT_PENDING_PREFIX + account_id


def claims_key(consumer_id: str) -> str:
    """Return the Redis key of the delivery tags one consumer holds."""
    return CLAIMS_PREFIX + consumer_id
