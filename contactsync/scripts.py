"""The Lua scripts Redis runs for us, read from `contactsync/lua/` (and `queue/accept.lua`)."""

from __future__ import annotations

from importlib import resources


def _read(name: str) -> str:
    return resources.files("contactsync").joinpath(f"lua/{name}").read_text()


_TOKEN_BUCKET = _read("token_bucket.lua")
# Each takes rate-limit tokens: each is the bucket functions followed by its own body. The
# gateway's accept script lives beside its caller, in contactsync/queue/.
ACCEPT = _TOKEN_BUCKET + resources.files("contactsync.queue").joinpath("accept.lua").read_text()
RATE_LIMIT = _TOKEN_BUCKET + _read("rate_limit.lua")
TAKE_TOKENS = _TOKEN_BUCKET + _read("take_tokens.lua")
PUBLISH_EVENTS = _read("publish_events.lua")
# A worker's heartbeat, and giving back what a dead one held (worker/liveness.py).
HEARTBEAT = _read("heartbeat.lua")
RESTORE_CLAIM = _read("restore_claim.lua")
FORGET_CONSUMER = _read("forget_consumer.lua")
