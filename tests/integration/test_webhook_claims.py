"""Fan-out, claims and retention on both databases, without workers: what the relay stores,
which deliveries a dispatcher may hand out, what retention deletes."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import hypothesis
import orjson
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from redis import Redis
from sqlalchemy import func, select

from contactsync import webhook_endpoints as store
from contactsync.db import Database
from contactsync.models import WebhookDelivery, WebhookEvent
from contactsync.settings import Settings
from contactsync.timeutil import isoformat, utcnow
from contactsync.webhook_claims import PENDING, claim_due, heads_due
from contactsync.webhook_fanout import EndpointDirectory, fan_out
from contactsync.webhook_retention import prune
from tests.conftest import make_tenant
from tests.webhook_support import deliveries, make_endpoint, webhook_settings

_tenants = itertools.count()


def event(account_id: str, contact_id: str, sequence: int, kind: str = "contact.updated") -> str:
    return orjson.dumps({
        "id": f"evt_{account_id[-6:]}{contact_id}{sequence}", "type": kind,
        "account_id": account_id, "contact_id": contact_id, "sequence": sequence,
        "occurred_at": isoformat(utcnow()), "contact": {"id": contact_id},
    }).decode()


def fanned(
    db: Database, payloads: list[str], now: datetime | None = None,
    directory: EndpointDirectory | None = None,
) -> int:
    directory = directory or EndpointDirectory(ttl=0)
    with db.unit_of_work() as session:
        return fan_out(session, payloads, directory.get(session), now or utcnow())


def test_fan_out_follows_accounts_types_and_enabled(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    acme, other, quiet = (make_tenant(db, n) for n in ("acme", "other", "quiet"))
    all_events, _ = make_endpoint(db, settings, acme.account_id, "https://a.example/h")
    created_only, _ = make_endpoint(db, settings, acme.account_id, "https://b.example/h",
                                    events=["contact.created"])
    make_endpoint(db, settings, other.account_id, "https://c.example/h", enabled=False)
    made = fanned(db, [
        event(acme.account_id, "cnt_1", 1), event(acme.account_id, "cnt_1", 2, "contact.created"),
        event(other.account_id, "cnt_2", 3), event(quiet.account_id, "cnt_3", 4),
    ])
    assert made == 3
    assert [d.sequence for d in deliveries(db, all_events)] == [1, 2]
    assert [d.sequence for d in deliveries(db, created_only)] == [2]
    with db.reading() as session:  # only what some endpoint wants is kept
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 2
    assert fanned(db, [event(quiet.account_id, "cnt_3", 5)]) == 0


def test_a_new_endpoint_gets_the_next_event_however_long_the_relay_caches(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    acme = make_tenant(db, "acme")
    # One relay's cache, trusted 30 s: it read the endpoints (none) for the first event.
    directory = EndpointDirectory(ttl=30, redis=redis_client)
    later = utcnow() + timedelta(hours=1)  # not due: a running stack's relay sends nothing
    assert fanned(db, [event(acme.account_id, "cnt_1", 1)], later, directory) == 0
    with db.unit_of_work() as session:  # as the API and the CLI make one
        endpoint, _ = store.create_endpoint(
            session, webhook_settings(settings), acme.account_id, "https://a.example/h",
            ["contact.updated"], "", utcnow(),
        )
    store.announce_change(redis_client)
    assert fanned(db, [event(acme.account_id, "cnt_1", 2)], later, directory) == 1
    assert [d.sequence for d in deliveries(db, endpoint.id)] == [2]


def test_without_redis_the_relay_reads_the_endpoints_each_pass(
    db: Database, settings: Settings
) -> None:
    acme = make_tenant(db, "acme")
    down = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=1)  # nothing listens
    directory = EndpointDirectory(ttl=30, redis=down)
    later = utcnow() + timedelta(hours=1)
    assert fanned(db, [event(acme.account_id, "cnt_1", 1)], later, directory) == 0
    # Made while the relay cannot read the version: its cache is not trusted.
    endpoint_id, _ = make_endpoint(db, settings, acme.account_id, "https://a.example/h")
    assert fanned(db, [event(acme.account_id, "cnt_1", 2)], later, directory) == 1
    assert [d.sequence for d in deliveries(db, endpoint_id)] == [2]
    down.close()


def test_only_a_contacts_head_is_claimed_and_only_once(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    acme = make_tenant(db, "acme")
    endpoint_id, _ = make_endpoint(db, settings, acme.account_id, "https://a.example/h")
    # An hour ahead: a running worker's relay (another test's stack, on the same database)
    # dispatches what is due now, and would claim these first.
    now = utcnow() + timedelta(hours=1)
    fanned(db, [event(acme.account_id, c, s) for c, s in
                (("cnt_1", 20), ("cnt_1", 10), ("cnt_2", 30), ("cnt_1", 40))], now)
    with db.unit_of_work() as session:
        (claim,) = claim_due(session, settings, now)
    heads = {d.id: d for d in deliveries(db, endpoint_id)}
    assert sorted(heads[i].sequence for i in claim.delivery_ids) == [10, 30]
    assert claim.attempt == 1 and claim.endpoint_id == endpoint_id
    with db.unit_of_work() as session:  # in flight: nothing more of those contacts
        assert claim_due(session, settings, now) == []
    later = now + timedelta(seconds=settings.webhook_lease_seconds + 1)
    with db.unit_of_work() as session:  # the lease lapsed (its worker died): again
        (again,) = claim_due(session, settings, later)
    assert sorted(again.delivery_ids) == sorted(claim.delivery_ids)
    assert again.token != claim.token


def test_an_endpoint_with_many_old_heads_leaves_the_next_endpoint_its_claim(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    acme = make_tenant(db, "acme")
    busy_id, _ = make_endpoint(db, settings, acme.account_id, "https://a.example/h")
    quiet_id, _ = make_endpoint(db, settings, acme.account_id, "https://b.example/h")
    now = utcnow() + timedelta(hours=1)  # no running relay of another test dispatches these
    older = settings.webhook_endpoint_max_tasks * settings.webhook_batch_size * 2
    with db.unit_of_work() as session:
        for n in range(older + 2):
            endpoint_id, due = (busy_id, now - timedelta(minutes=10)) if n < older \
                else (quiet_id, now)
            session.add(WebhookDelivery(
                endpoint_id=endpoint_id, event_id=f"evt_{n}", contact_id=f"cnt_{n}",
                sequence=1, status=PENDING, attempts=0, next_attempt_at=due, created_at=now,
            ))
    with db.unit_of_work() as session:
        claims = claim_due(session, settings, now)
    handed: dict[str, int] = {}
    for claim in claims:
        handed[claim.endpoint_id] = handed.get(claim.endpoint_id, 0) + len(claim.delivery_ids)
    assert handed == {busy_id: settings.webhook_endpoint_max_tasks * settings.webhook_batch_size,
                      quiet_id: 2}


def test_retention_keeps_what_is_pending_and_recent(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    acme = make_tenant(db, "acme")
    endpoint_id, _ = make_endpoint(db, settings, acme.account_id, "https://a.example/h")
    # Due only in an hour, so that no running relay sends them meanwhile.
    fanned(db, [event(acme.account_id, "cnt_1", s) for s in (1, 2, 3)],
           utcnow() + timedelta(hours=1))
    old = utcnow() - timedelta(days=settings.webhook_event_retention_days + 1)
    first, second, _ = deliveries(db, endpoint_id)
    with db.unit_of_work() as session:
        for row in session.scalars(select(WebhookEvent)):
            row.occurred_at = old
        for delivery_id, status in ((first.id, "succeeded"), (second.id, "pending")):
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None
            row.status, row.created_at = status, old
    assert prune(db, settings, utcnow()) == 1 + 1  # the old finished delivery, its event
    assert [d.sequence for d in deliveries(db, endpoint_id)] == [2, 3]
    with db.reading() as session:  # the pending ones' events stay, old or not
        kept = session.scalars(select(WebhookEvent.sequence).order_by(WebhookEvent.sequence))
        assert list(kept) == [2, 3]


# One delivery row: (contact, sequence, status, due, lease); due and lease are minutes from now
# (None: no lease), so that rows are due or not, in flight, or past a lapsed lease.
_ROWS = st.lists(st.tuples(
    st.sampled_from(["cnt_a", "cnt_b", "cnt_c", "cnt_d"]), st.integers(1, 6),
    st.sampled_from([PENDING, PENDING, PENDING, "succeeded", "failed"]),
    st.integers(-3, 2), st.none() | st.integers(-2, 2),
), max_size=14)


def _expected_heads(rows: list[tuple[int, WebhookDelivery]], now: datetime) -> list[int]:
    """What a claim may hand out, from the rule itself: per contact, the pending row of lowest
    (sequence, id), if it is due and none of the contact's pending rows is in flight; in
    (next attempt, id) order."""
    pending = [(i, r) for i, r in rows if r.status == PENDING]
    heads = []
    for contact in {r.contact_id for _, r in pending}:
        mine = [(i, r) for i, r in pending if r.contact_id == contact]
        if any(r.claimed_until is not None and r.claimed_until > now for _, r in mine):
            continue
        head_id, head = min(mine, key=lambda ir: (ir[1].sequence, ir[0]))
        if head.next_attempt_at <= now:
            heads.append((head.next_attempt_at, head_id))
    return [i for _, i in sorted(heads)]


@hypothesis.settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=_ROWS, limit=st.integers(1, 5))
def test_a_claim_hands_out_exactly_the_heads_the_rule_names(
    db: Database, settings: Settings, rows: list[tuple[str, int, str, int, int | None]],
    limit: int,
) -> None:
    acme = make_tenant(db, f"acme{next(_tenants)}")
    endpoint_id, _ = make_endpoint(db, settings, acme.account_id, "https://a.example/h")
    # An hour ahead: no running relay of another test's stack dispatches these.
    now = utcnow().replace(microsecond=0) + timedelta(hours=1)
    with db.unit_of_work() as session:
        stored = []
        for n, (contact, sequence, status, due, lease) in enumerate(rows):
            row = WebhookDelivery(
                endpoint_id=endpoint_id, event_id=f"evt_{n}", contact_id=contact,
                sequence=sequence, status=status, attempts=0,
                next_attempt_at=now + timedelta(minutes=due), created_at=now,
                claim_token=None if lease is None else "t",
                claimed_until=None if lease is None else now + timedelta(minutes=lease),
            )
            session.add(row)
            stored.append(row)
        session.flush()
        by_id = [(r.id, r) for r in stored]
        expected = _expected_heads(by_id, now)
    with db.unit_of_work() as session:
        claimed = [r.id for r in session.execute(heads_due(
            now, limit, [endpoint_id], session.get_bind().dialect.name))]
    assert claimed == expected[:limit]
