"""Parking, on both databases, without workers: a delivery behind an earlier pending one of its
contact waits out of the claims' scan until that one finishes, and is never parked for good."""

from __future__ import annotations

import itertools
import threading
from datetime import datetime, timedelta

import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from redis import Redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from contactsync import names
from contactsync import webhook_endpoints as store
from contactsync.db import Database
from contactsync.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from contactsync.settings import Settings
from contactsync.timeutil import as_utc, utcnow
from contactsync.webhook_claims import PARKED, PENDING, Claim, claim_due, unpark_stranded
from contactsync.webhook_outcomes import Result, record_results
from contactsync.webhook_retention import delete_finished, finished_before, prune
from tests.conftest import make_tenant
from tests.integration.test_webhook_claims import event, fanned
from tests.support import wait_blocked
from tests.webhook_support import deliveries, make_endpoint

_tenants = itertools.count()


@pytest.fixture(autouse=True)
def no_housekeeping(db: Database, redis_client: Redis) -> None:
    """Keep the running stack's relays (other tests start one) from pruning and sweeping
    parked deliveries in the middle of these tests: they hold the lock every relay takes
    first. After `db`, which empties Redis."""
    redis_client.set(names.WEBHOOK_PRUNE_LOCK_KEY, "tests", ex=600)


def _endpoint(db: Database, settings: Settings) -> tuple[str, str, datetime]:
    """Return a new account, its endpoint, and a time an hour ahead to work at: no running
    relay of another test's stack dispatches what is due only then."""
    account_id = make_tenant(db, "acme").account_id
    endpoint_id, _ = make_endpoint(db, settings, account_id, "https://a.example/h")
    return account_id, endpoint_id, utcnow() + timedelta(hours=1)


def _age(db: Database, settings: Settings, *, events: bool) -> datetime:
    """Make every delivery (and every event, if `events`) older than the retention; return
    that time."""
    old = utcnow() - timedelta(days=settings.webhook_event_retention_days + 1)
    with db.unit_of_work() as session:
        session.execute(update(WebhookDelivery).values(created_at=old))
        if events:
            session.execute(update(WebhookEvent).values(occurred_at=old))
    return old


def _replay(session: Session, endpoint_id: str, since: datetime, now: datetime) -> int:
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    assert endpoint is not None
    return store.replay(session, endpoint, since, now)


def _is_parked(row: WebhookDelivery) -> bool:
    return as_utc(row.next_attempt_at) == PARKED  # SQLite gives it back without its zone


def _parked(db: Database, endpoint_id: str) -> list[int]:
    return [d.sequence for d in deliveries(db, endpoint_id)
            if d.status == PENDING and _is_parked(d)]


def _claim(db: Database, settings: Settings, now: datetime) -> list[Claim]:
    with db.unit_of_work() as session:
        return claim_due(session, settings, now)


def _record(db: Database, settings: Settings, claims: list[Claim], now: datetime,
            status_code: int) -> None:
    """Record one attempt of each claimed delivery, answered `status_code`."""
    for claim in claims:
        results = [
            Result(delivery_id, event_id, now, 5, status_code, None,
                   retry_at=now + timedelta(minutes=1))
            for delivery_id, event_id in zip(claim.delivery_ids, claim.event_ids, strict=True)
        ]
        with db.unit_of_work() as session:
            record_results(session, claim.endpoint_id, claim.token, results, settings, now)


def _sequences(db: Database, claims: list[Claim]) -> list[int]:
    ids = {i for claim in claims for i in claim.delivery_ids}
    endpoint_ids = {claim.endpoint_id for claim in claims}
    return sorted(d.sequence for e in endpoint_ids for d in deliveries(db, e) if d.id in ids)


def test_deliveries_behind_a_retrying_head_wait_parked_until_it_finishes(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    account_id, endpoint_id, now = _endpoint(db, settings)
    fanned(db, [event(account_id, "cnt_1", s) for s in (1, 2, 3)], now)
    assert _parked(db, endpoint_id) == []  # behind a head that is due: due, a moment

    first = _claim(db, settings, now)
    assert _sequences(db, first) == [1]
    _record(db, settings, first, now, 500)  # retried in a minute: what is behind it waits
    assert _parked(db, endpoint_id) == [2, 3]
    fanned(db, [event(account_id, "cnt_1", 5)], now)  # behind the retrying head
    assert _parked(db, endpoint_id) == [2, 3, 5]
    assert _claim(db, settings, now) == []

    later = now + timedelta(minutes=1)
    second = _claim(db, settings, later)
    assert _sequences(db, second) == [1]
    out_of_retries = settings.model_copy(update={"webhook_retry_for_seconds": 0})
    _record(db, out_of_retries, second, later, 500)  # finally failed: the next one goes
    assert _parked(db, endpoint_id) == [3, 5]
    third = _claim(db, settings, later)
    assert _sequences(db, third) == [2]
    _record(db, settings, third, later, 204)  # done: the next one goes
    assert _parked(db, endpoint_id) == [5]
    assert _sequences(db, _claim(db, settings, later)) == [3]


def test_a_fan_out_waits_for_a_finishing_head_and_does_not_park_behind_it(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    account_id, endpoint_id, now = _endpoint(db, settings)
    fanned(db, [event(account_id, "cnt_1", 1)], now)
    _record(db, settings, _claim(db, settings, now), now, 500)  # its retry: in a minute
    later = now + timedelta(minutes=2)
    (claim,) = _claim(db, settings, later)
    # A relay whose clock reads `now` fans out the next event while the retry's success, at
    # `later`, is recorded. Had it read the head before this commit, still waiting for its
    # retry by its clock, it would park the new delivery; and this commit, which saw no
    # later delivery to promote, would leave it parked for good.
    late = threading.Thread(target=fanned, args=(db, [event(account_id, "cnt_1", 2)], now))
    with db.unit_of_work() as session:
        result = Result(claim.delivery_ids[0], claim.event_ids[0], later, 5, 204, None, later)
        record_results(session, endpoint_id, claim.token, [result], settings, later)
        late.start()
        wait_blocked(db, late.native_id, late.is_alive)
    late.join()
    assert [(d.sequence, d.status) for d in deliveries(db, endpoint_id)] == [
        (1, "succeeded"), (2, PENDING)]
    assert _parked(db, endpoint_id) == []


def test_a_replay_parks_each_contact_s_later_deliveries_behind_its_first(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    account_id, endpoint_id, now = _endpoint(db, settings)
    since = utcnow() - timedelta(minutes=1)
    fanned(db, [event(account_id, c, s) for c, s in
                (("cnt_1", 1), ("cnt_1", 2), ("cnt_2", 3))], now)
    _record(db, settings, _claim(db, settings, now), now, 204)
    _record(db, settings, _claim(db, settings, now), now, 204)
    assert {d.status for d in deliveries(db, endpoint_id)} == {"succeeded"}
    with db.unit_of_work() as session:
        assert _replay(session, endpoint_id, since, now) == 3
    assert _parked(db, endpoint_id) == [2]
    assert _sequences(db, _claim(db, settings, now)) == [1, 3]


def test_a_claim_beside_a_replay_never_sends_the_later_delivery_first(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    account_id, endpoint_id, now = _endpoint(db, settings)
    since = utcnow() - timedelta(minutes=1)
    fanned(db, [event(account_id, "cnt_1", 1)], now)
    _record(db, settings, _claim(db, settings, now), now, 204)
    fanned(db, [event(account_id, "cnt_1", 2)], now)  # the head now: 1 succeeded
    claimed: list[list[Claim]] = []
    claiming = threading.Thread(target=lambda: claimed.append(_claim(db, settings, now)))
    with db.unit_of_work() as session:  # 1 is pending again, before 2
        _replay(session, endpoint_id, since, now)
        claiming.start()
        # PostgreSQL: the claim skips the rows the replay holds; SQLite: it waits to write.
        wait_blocked(db, claiming.native_id, claiming.is_alive)
    claiming.join()
    first = _sequences(db, claimed[0])
    assert first in ([], [1])
    if not first:
        assert _sequences(db, _claim(db, settings, now)) == [1]


def test_prune_leaves_a_delivery_a_replay_made_pending_after_it_was_chosen(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    account_id, endpoint_id, now = _endpoint(db, settings)
    fanned(db, [event(account_id, "cnt_1", 1)], now)
    _record(db, settings, _claim(db, settings, now), now, 204)
    old = _age(db, settings, events=True)  # 1 is past retention; its event not pruned yet
    fanned(db, [event(account_id, "cnt_1", 2)], now)
    cutoff = utcnow() - timedelta(days=settings.webhook_event_retention_days)
    with db.unit_of_work() as session:
        chosen = finished_before(session, cutoff)
    assert len(chosen) == 1
    with db.unit_of_work() as session:  # a replay commits between prune's read and delete
        _replay(session, endpoint_id, old - timedelta(seconds=1), now)
    with db.unit_of_work() as session:
        delete_finished(session, chosen, cutoff)
    assert [(d.sequence, d.status) for d in deliveries(db, endpoint_id)] == [
        (1, PENDING), (2, PENDING)]
    assert _parked(db, endpoint_id) == [2]
    assert _sequences(db, _claim(db, settings, now)) == [1]


# What happens to two endpoints' deliveries, step by step: an event of a contact fans out to
# both (its sequence); the due heads are claimed, and stay in flight until the claims are
# answered (204: done; 500: retried in a minute; "fail": out of retries); the clock moves on;
# or one endpoint replays the events since the n-th one (0: all of them).
_STEPS = st.lists(st.one_of(
    st.tuples(st.just("event"), st.sampled_from(["cnt_a", "cnt_b", "cnt_c"]), st.integers(1, 9)),
    st.tuples(st.just("claim"), st.none(), st.none()),
    st.tuples(st.just("answer"), st.sampled_from([204, 500, "fail"]), st.none()),
    st.tuples(st.just("tick"), st.none(), st.none()),
    st.tuples(st.just("replay"), st.integers(0, 1), st.integers(0, 6)),
), max_size=18)


def _check(rows: list[WebhookDelivery], now: datetime) -> None:
    """Each contact's head (its pending delivery of lowest sequence, then id) is not parked,
    and at most one of its deliveries is in flight."""
    pending = [r for r in rows if r.status == PENDING]
    for contact in {r.contact_id for r in pending}:
        mine = [r for r in pending if r.contact_id == contact]
        head = min(mine, key=lambda r: (r.sequence, r.id))
        assert not _is_parked(head), (contact, [(r.sequence, r.next_attempt_at) for r in mine])
        flying = [r for r in mine if r.claimed_until is not None
                  and r.claimed_until.replace(tzinfo=None) > now.replace(tzinfo=None)]
        assert len(flying) <= 1, (contact, [r.sequence for r in flying])


@hypothesis.settings(max_examples=60, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])
@given(steps=_STEPS)
def test_no_step_leaves_a_head_parked_or_two_deliveries_in_flight(
    db: Database, settings: Settings, steps: list[tuple[str, object, object]]
) -> None:
    account_id = make_tenant(db, f"acme{next(_tenants)}").account_id
    endpoint_ids = [make_endpoint(db, settings, account_id, f"https://{n}.example/h")[0]
                    for n in "ab"]
    out_of_retries = settings.model_copy(update={"webhook_retry_for_seconds": 0})
    times = [utcnow() - timedelta(minutes=1)]  # replay since: before all, or an event's time
    now = utcnow().replace(microsecond=0) + timedelta(hours=1)
    made = itertools.count()
    in_flight: list[Claim] = []
    for kind, what, which in steps:
        if kind == "event":
            assert isinstance(what, str) and isinstance(which, int)
            times.append(utcnow())
            payload = event(account_id, what, which).replace(
                '"id":"evt_', f'"id":"evt_{next(made)}_', 1)  # an event of its own each time
            fanned(db, [payload], now)
        elif kind == "claim":
            in_flight += _claim(db, settings, now)
        elif kind == "answer":
            if what == "fail":
                _record(db, out_of_retries, in_flight, now, 500)
            else:
                assert isinstance(what, int)
                _record(db, settings, in_flight, now, what)
            in_flight = []
        elif kind == "tick":
            now += timedelta(minutes=1)
        else:
            assert isinstance(what, int) and isinstance(which, int)
            with db.unit_of_work() as session:
                _replay(session, endpoint_ids[what], times[min(which, len(times) - 1)], now)
        for endpoint_id in endpoint_ids:
            _check(deliveries(db, endpoint_id), now)
    _record(db, settings, in_flight, now, 204)
    # And whatever is pending goes out in the end, each contact in sequence order.
    sent: list[tuple[str, str, int]] = []
    for _ in range(len(steps) + 1):
        now += timedelta(minutes=1)
        claims = _claim(db, settings, now)
        by_id = {d.id: d for e in endpoint_ids for d in deliveries(db, e)}
        sent += [(c.endpoint_id, by_id[i].contact_id, by_id[i].sequence)
                 for c in claims for i in c.delivery_ids]
        _record(db, settings, claims, now, 204)
    for endpoint_id in endpoint_ids:
        assert {d.status for d in deliveries(db, endpoint_id)} <= {"succeeded", "failed"}
    for endpoint_id, contact in {(e, c) for e, c, _ in sent}:
        mine = [s for e, c, s in sent if (e, c) == (endpoint_id, contact)]
        assert mine == sorted(mine), (endpoint_id, contact, mine)


def test_the_sweep_makes_a_stranded_head_due_and_leaves_the_rest_parked(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    account_id, endpoint_id, now = _endpoint(db, settings)
    fanned(db, [event(account_id, "cnt_1", s) for s in (1, 2, 3)], now)
    _record(db, settings, _claim(db, settings, now), now, 500)
    assert _parked(db, endpoint_id) == [2, 3]
    with db.unit_of_work() as session:  # 1 finished as a worker of the code before parking
        session.execute(update(WebhookDelivery).where(WebhookDelivery.sequence == 1)
                        .values(status="succeeded"))
    with db.unit_of_work() as session:
        assert unpark_stranded(session, now) == 1
    assert _parked(db, endpoint_id) == [3]
    assert _sequences(db, _claim(db, settings, now)) == [2]


def test_prune_waits_for_a_replay_and_keeps_the_events_it_made_pending(
    db: Database, settings: Settings, redis_client: Redis
) -> None:
    account_id, endpoint_id, now = _endpoint(db, settings)
    fanned(db, [event(account_id, "cnt_1", 1)], now)
    _record(db, settings, _claim(db, settings, now), now, 204)
    old = _age(db, settings, events=False)  # the delivery is pruned, its event not yet
    prune(db, settings, utcnow())
    assert deliveries(db, endpoint_id) == []
    with db.unit_of_work() as session:  # and now the event is past retention too
        session.execute(update(WebhookEvent).values(occurred_at=old))
    pruning = threading.Thread(target=prune, args=(db, settings, utcnow()))
    with db.unit_of_work() as session:  # the event goes out again: a new pending delivery
        assert _replay(session, endpoint_id, old - timedelta(seconds=1), now) == 1
        pruning.start()
        wait_blocked(db, pruning.native_id, pruning.is_alive)
    pruning.join()
    with db.reading() as session:  # else the delivery's event would be gone: never sent
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 1
    assert _sequences(db, _claim(db, settings, now)) == [1]
