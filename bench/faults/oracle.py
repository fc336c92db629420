"""The independent check of a scenario: replay what each client sent, in sequence order.

The oracle is a plain dict per contact: a field sent takes the value sent, tags are replaced,
custom fields merged key by key (null removes the key). Updates are replayed in the order the
gateway accepted them, which is the order of their sequence numbers, read back from
`update_records.seq`. Then every contact, every update record and every event in the stream
is checked against it.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis import Redis
from sqlalchemy import func, select

from bench.faults.load import LoadLog, Sent
from contactsync import names
from contactsync.db import Database
from contactsync.models import Contact, OutboxEvent, UpdateRecord
from contactsync.settings import Settings
from contactsync.timeutil import isoformat

FINISHED = ("applied", "noop", "failed", "not_found")
STREAM = Settings().events_stream


def replay(initial: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """Return a contact's fields after applying `patches` in order, as plain dict updates."""
    state = {**initial, "tags": list(initial["tags"]),
             "custom_fields": dict(initial["custom_fields"])}
    for patch in patches:
        for name, value in patch.items():
            if name == "custom_fields":
                for key, item in value.items():
                    if item is None:
                        state["custom_fields"].pop(key, None)
                    else:
                        state["custom_fields"][key] = item
            else:
                state[name] = list(value) if name == "tags" else value
    return state


def canonical(fields: dict[str, Any]) -> bytes:
    """Return JSON that tells 1 from true (a dict comparison in Python would not)."""
    keys = ("name", "email", "phone", "company", "position", "linkedin_url", "tags",
            "custom_fields")
    return orjson.dumps({k: fields[k] for k in keys}, option=orjson.OPT_SORT_KEYS)


@dataclass
class Report:
    """One scenario's figures; `violations()` names every broken promise."""

    scenario: str
    sent: int = 0
    accepted: int = 0
    unavailable: int = 0  # 503 with Retry-After
    other: int = 0  # any other answer, a 503 without Retry-After, no answer at all
    applied: int = 0  # accepted updates finished applied or noop
    lost: int = 0
    failed: int = 0
    ghosts: int = 0  # answered otherwise than 2xx, yet queued and applied
    unexplained: int = 0  # records no request explains
    applied_twice: int = 0  # updates with more than one distinct event id
    republished: int = 0  # stream entries repeating an event id (at-least-once relay)
    events: int = 0  # distinct event ids
    changing: int = 0  # updates whose record says applied (they changed something)
    stray_events: int = 0  # events of updates that did not change anything
    state_mismatches: int = 0  # contacts that differ from the oracle
    stream_mismatches: int = 0  # contacts whose last event does not show their final state
    seq_backwards: int = 0  # a client's later update with a lower sequence number
    slowest_503: float = 0.0
    slowest_2xx: float = 0.0
    seconds: float = 0.0
    accepted_after_fault: int = 0  # 2xx answers to requests sent after the fault step ended
    recovery_seconds: float | None = None  # a dead worker's death until all it held applied
    counters: dict[str, int] = field(default_factory=dict)  # what the fault step counted
    notes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        checks = {
            "lost": self.lost, "failed": self.failed, "applied twice": self.applied_twice,
            "other responses": self.other, "unexplained records": self.unexplained,
            "events of unchanged updates": self.stray_events,
            "contacts unlike the oracle": self.state_mismatches,
            "contacts unlike their last event": self.stream_mismatches,
            "sequence numbers going backwards": self.seq_backwards,
            "event ids minus changing updates": abs(self.events - self.changing),
        }
        found = [f"{name}: {count}" for name, count in checks.items() if count]
        found += [n for n in self.notes if n.startswith("VIOLATION")]
        if self.accepted == 0:
            found.append("nothing accepted")
        return found + self.examples[:5]


def wait_drained(
    db: Database, redis: Redis, update_ids: list[str], timeout: float
) -> bool:
    """Wait until every update has a finished record and the outbox is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with db.reading() as session:
                done = 0
                for start in range(0, len(update_ids), 5000):
                    chunk = update_ids[start : start + 5000]
                    done += session.scalar(
                        select(func.count()).select_from(UpdateRecord).where(
                            UpdateRecord.update_id.in_(chunk), UpdateRecord.status.in_(FINISHED)
                        )
                    ) or 0
                outbox = session.scalar(select(func.count()).select_from(OutboxEvent)) or 0
            if done >= len(update_ids) and outbox == 0:
                time.sleep(0.5)  # a few more relay passes: a re-published entry shows by now
                return True
        except Exception:
            pass  # the database may be restarting
        time.sleep(0.25)
    return False


def stream_events(redis: Redis) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    start = "-"
    while True:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = redis.xrange(  # type: ignore[assignment]
            STREAM, min=start, count=5000
        )
        if not entries:
            return events
        for _, fields in entries:
            events.append(orjson.loads(fields[b"event"]))
        start = "(" + entries[-1][0].decode()


def reserved_update_id(redis: Redis, account_id: str, item: Sent) -> str | None:
    """Return the update id the gateway reserved under a request's Idempotency-Key, if any."""
    digest = hashlib.sha256(item.idempotency_key.encode()).hexdigest()
    raw = redis.get(names.idempotency_key(account_id, digest))
    return None if raw is None else str(orjson.loads(raw)["update_id"])


def check(
    scenario: str, log: LoadLog, db: Database, redis: Redis, account_id: str,
    initial: dict[str, dict[str, Any]],
) -> Report:
    """Compare the final state, the update records and the event stream with the oracle."""
    report = Report(scenario, sent=len(log.sent))
    accepted = log.accepted()
    report.accepted = len(accepted)
    for item in log.sent:
        if item.status == 503 and item.error is None:
            report.unavailable += 1
            report.slowest_503 = max(report.slowest_503, item.seconds)
        elif item.status is None or item.error is not None:
            report.other += 1
            report.examples.append(f"answer {item.status}: {item.error}")
        else:
            report.slowest_2xx = max(report.slowest_2xx, item.seconds)
    with db.reading() as session:
        records = {r.update_id: r for r in session.scalars(
            select(UpdateRecord).where(
                UpdateRecord.account_id == account_id, UpdateRecord.contact_id.in_(initial)
            )
        )}
        contacts = {c.id: c for c in session.scalars(
            select(Contact).where(Contact.account_id == account_id, Contact.id.in_(initial))
        )}
    known = {s.update_id: s for s in accepted if s.update_id}
    for item in log.sent:
        if item.update_id is None:
            reserved = reserved_update_id(redis, account_id, item)
            if reserved is not None and reserved in records:
                report.ghosts += 1
                known[reserved] = Sent(item.contact_id, item.patch, item.idempotency_key,
                                       item.client, item.status, reserved)
    report.unexplained = len(set(records) - set(known))
    for update_id in (s.update_id for s in accepted if s.update_id):
        record = records.get(update_id)
        if record is None or record.status not in ("applied", "noop"):
            report.lost += record is None
            report.failed += record is not None and record.status == "failed"
            if len(report.examples) < 5:
                status = None if record is None else record.status
                report.examples.append(f"update {update_id}: {status}")
        else:
            report.applied += 1
    report.changing = sum(1 for r in records.values() if r.status == "applied")
    _check_sequences(report, accepted, records)
    _check_states(report, known, records, contacts, initial)
    _check_events(report, stream_events(redis), records, contacts)
    return report


def _check_sequences(
    report: Report, accepted: list[Sent], records: dict[str, UpdateRecord]
) -> None:
    """Each client waits for one answer before sending the next: its sequences must rise."""
    last: dict[int, int] = {}
    for item in accepted:  # in the order the log received them: per client, in send order
        record = records.get(item.update_id or "")
        if record is None:
            continue
        if record.seq <= last.get(item.client, -1):
            report.seq_backwards += 1
        last[item.client] = record.seq


def _check_states(
    report: Report, known: dict[str, Sent], records: dict[str, UpdateRecord],
    contacts: dict[str, Contact], initial: dict[str, dict[str, Any]],
) -> None:
    by_contact: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for update_id, item in known.items():
        record = records.get(update_id)
        if record is not None and record.status in ("applied", "noop"):
            by_contact[item.contact_id].append((record.seq, item.patch))
    for contact_id, start in initial.items():
        patches = [p for _, p in sorted(by_contact[contact_id], key=lambda sp: sp[0])]
        expected = replay(start, patches)
        row = contacts[contact_id]
        actual = {name: getattr(row, name) for name in expected}
        if canonical(expected) != canonical(actual):
            report.state_mismatches += 1
            report.examples.append(
                f"{contact_id}: expected {canonical(expected)!r}, found {canonical(actual)!r}"
            )


def _check_events(
    report: Report, events: list[dict[str, Any]], records: dict[str, UpdateRecord],
    contacts: dict[str, Contact],
) -> None:
    ids_by_update: dict[str, set[str]] = defaultdict(set)
    entries = 0
    by_contact: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event.get("type") != "contact.updated" or event["contact_id"] not in contacts:
            continue
        entries += 1
        ids_by_update[event["update_id"]].add(event["id"])
        by_contact[event["contact_id"]].append(event["contact"])
    distinct = set().union(*ids_by_update.values()) if ids_by_update else set()
    report.events = len(distinct)
    report.republished = entries - len(distinct)
    report.applied_twice = sum(1 for ids in ids_by_update.values() if len(ids) > 1)
    report.stray_events = sum(
        1 for update_id in ids_by_update
        if update_id not in records or records[update_id].status != "applied"
    )
    for contact_id, row in contacts.items():
        if not by_contact[contact_id]:
            continue
        # The last change moved updated_at to its own time: its event shows the final state.
        # (Stream order is no guide: two workers' relays may publish out of commit order.)
        final = canonical({name: getattr(row, name) for name in by_contact[contact_id][0]
                           if hasattr(Contact, name)})
        updated_at = isoformat(row.updated_at)
        shown = [c for c in by_contact[contact_id] if c["updated_at"] == updated_at]
        if not any(canonical(c) == final for c in shown):
            report.stream_mismatches += 1
