"""The queue's wire format: Celery protocol-2 task messages as kombu's Redis transport stores
them, built and read without Celery, and the Redis keys kombu keeps them under.

After a kombu or Celery upgrade this module is the one to check against them
(tests/integration/test_celery_message.py compares its messages with `apply_async`'s), with
worker/transport.py and worker/liveness.py, which extend kombu's transport itself.
"""

from __future__ import annotations

import base64
import binascii
import random
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import orjson

from contactsync import names
from contactsync.updates import AcceptedUpdate, owners_argument, task_argsrepr

__all__ = [
    "UNACKED_KEY", "build_task_message", "priority_lists", "queue_list_key", "task_message",
    "task_messages", "unacked_update_ids", "update_ids", "updates_in",
]

# kombu's Redis transport keeps a message it handed to a worker here until it is acknowledged,
# as [message, exchange, routing key].
UNACKED_KEY = "unacked"

# Protocol-2 "embed" part for a plain task: no callbacks, errbacks, chain or chord.
_EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# Datetimes and dataclasses must reach `_default` so the body matches kombu's JSON encoder
# (typed envelopes for datetimes, TypeError for dataclasses) instead of orjson's native forms.
# Non-str keys are stringified, as json.dumps does.
_BODY_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_BODY_OPTS |= orjson.OPT_NON_STR_KEYS

# The envelope is filled in by %-formatting rather than by dumping a dict: it is constant but
# for ten slots, and this cuts about a third off the builder's cost. Keys and values follow
# celery.app.amqp.AMQP.as_task_v2, then what kombu's virtual Channel adds in prepare_message and
# _inplace_augment_message. Every %b slot takes orjson-quoted JSON, except the body (base64) and
# the delivery tag (hex and dashes), which need no escaping and sit inside literal quotes.
_ENVELOPE = (
    b"{"
    # kombu's default Channel.body_encoding; the worker decodes whatever body_encoding names.
    b'"body":"%b",'
    b'"content-encoding":"utf-8",'
    b'"content-type":"application/json",'
    b'"headers":{'
    b'"lang":"py",'
    b'"task":%b,'
    b'"id":%b,'
    b'"shadow":null,'
    b'"eta":null,'
    b'"expires":null,'
    b'"group":null,'
    b'"group_index":null,'
    b'"retries":0,'
    b'"timelimit":[null,null],'
    b'"root_id":%b,'
    b'"parent_id":null,'
    b'"argsrepr":%b,'
    b'"kwargsrepr":%b,'
    b'"origin":%b,'
    b'"ignore_result":true,'
    b'"replaced_task_nesting":0,'
    b'"stamped_headers":null,'
    b'"stamps":{}'
    b"},"
    b'"properties":{'
    b'"correlation_id":%b,'
    # Empty like as_task_v2's default: with ignore_result the worker never replies.
    b'"reply_to":"",'
    b'"delivery_mode":2,'
    # The anonymous exchange routes straight to the queue's list, and lets a worker restore an
    # unacked message without any exchange binding stored in Redis.
    b'"delivery_info":{"exchange":"","routing_key":%b},'
    b'"priority":0,'
    b'"body_encoding":"base64",'
    b'"delivery_tag":"%b"'
    b"}"
    b"}"
)

_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)
# The module-level Mersenne Twister is reseeded from urandom in every forked child, so forked
# gateway processes never share tags; tags need uniqueness, not secrecy, and urandom costs a
# syscall per call.
_getrandbits = random.getrandbits


def _kombu_envelope(marker: str, value: Any) -> dict[str, Any]:
    return {"__type__": marker, "__value__": value}


def _default(obj: Any) -> Any:
    """Encode a non-JSON value the way kombu.utils.json.JSONEncoder does."""
    reducer = getattr(obj, "__json__", None)
    if reducer is not None:
        return reducer()
    # datetime before date: a datetime is also a date, and kombu checks it first.
    if isinstance(obj, datetime):
        return _kombu_envelope("datetime", obj.isoformat())
    if isinstance(obj, date):
        return _kombu_envelope("date", obj.isoformat())
    if isinstance(obj, time):
        return _kombu_envelope("time", obj.isoformat())
    if isinstance(obj, Decimal):
        return _kombu_envelope("decimal", str(obj))
    if isinstance(obj, bytes):
        try:
            return _kombu_envelope("bytes", obj.decode("utf-8"))
        except UnicodeDecodeError:
            return _kombu_envelope("base64", base64.b64encode(obj).decode("ascii"))
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _delivery_tag() -> bytes:
    """Return a random UUID4 in canonical form, as kombu's uuid() makes delivery tags."""
    h = b"%032x" % (_getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return b"%b-%b-%b-%b-%b" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def queue_list_key(queue: str) -> str:
    """Return the Redis list key kombu's Redis transport uses for priority-0 messages of a queue."""
    # kombu's Channel._q_for_pri rounds a priority down to a step of (0, 3, 6, 9); step 0 is the
    # bare queue name, others are f"{queue}\x06\x16{step}". Messages built here carry priority 0.
    # A `global_keyprefix` transport option, if the workers use one, is the caller's to prepend.
    return queue


def priority_lists(queue: str) -> list[str]:
    """Return every list kombu may keep a queue's messages in, priority 0 first."""
    # kombu keeps messages of priority 3, 6 and 9 in lists of their own (a retry could use one).
    return [queue_list_key(queue), *(f"{queue}\x06\x16{step}" for step in (3, 6, 9))]


def build_task_message(
    *,
    task_name: str,
    task_id: str,
    args: list[Any],
    kwargs: dict[str, Any],
    queue: str,
    argsrepr: str,
    kwargsrepr: str,
    origin: str,
) -> bytes:
    """Return the bytes kombu's Redis transport stores for one Celery protocol-2 task message."""
    body = orjson.dumps((args, kwargs, _EMBED), default=_default, option=_BODY_OPTS)
    dumps = orjson.dumps
    quoted_id = dumps(task_id)
    return _ENVELOPE % (
        binascii.b2a_base64(body, newline=False),
        dumps(task_name),
        quoted_id,
        quoted_id,
        dumps(argsrepr),
        dumps(kwargsrepr),
        dumps(origin),
        quoted_id,
        dumps(queue),
        _delivery_tag(),
    )


def task_message(queue: str, updates: list[AcceptedUpdate], origin: str) -> bytes:
    """Return one apply task message naming these updates by id, with each one's owner.

    The owners (account and contact ids, no personal data) let a worker record an update whose
    stored body was lost as `failed`, where its account can read it, instead of dropping it.
    """
    return build_task_message(
        task_name=names.APPLY_TASK,
        task_id=str(uuid.uuid4()),
        args=[[u.update_id for u in updates]],
        kwargs={"owners": owners_argument([(u.account_id, u.contact_id) for u in updates])},
        queue=queue,
        argsrepr=task_argsrepr(updates),
        kwargsrepr="{}",
        origin=origin,
    )


def task_messages(
    updates: list[AcceptedUpdate], max_batch: int, origin: str
) -> list[tuple[str, bytes]]:
    """Return (queue, message) pairs carrying these updates, at most `max_batch` each."""
    by_queue: dict[str, list[AcceptedUpdate]] = {}
    for update in updates:
        by_queue.setdefault(update.queue, []).append(update)
    messages = []
    for queue, group in by_queue.items():
        for start in range(0, len(group), max_batch):
            chunk = group[start : start + max_batch]
            messages.append((queue, task_message(queue, chunk, origin)))
    return messages


def _args(envelope: Any) -> Any:
    """Return the positional arguments of a decoded message (errors are the caller's)."""
    return orjson.loads(base64.b64decode(envelope["body"]))[0]


def update_ids(message: bytes) -> list[str]:
    """Return the update ids a queued apply task message names (none for any other message)."""
    return _ids_named(_loads(message))


def unacked_update_ids(entry: bytes) -> list[str]:
    """Return the update ids the message of an `UNACKED_KEY` entry names."""
    decoded = _loads(entry)
    return _ids_named(decoded[0] if isinstance(decoded, list) and decoded else None)


def _ids_named(envelope: Any) -> list[str]:
    try:
        if envelope["headers"]["task"] != names.APPLY_TASK:
            return []
        return [i for i in _args(envelope)[0] if isinstance(i, str)]
    except (KeyError, IndexError, TypeError, ValueError):
        return []


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def updates_in(message: bytes) -> int:
    """Return how many updates one queued task message carries (1 if it cannot tell)."""
    try:
        return max(1, len(_args(orjson.loads(message))[0]))
    except Exception:
        return 1  # not ours, or not readable: count it as one
