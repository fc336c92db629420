"""The apply path on PostgreSQL against the pure merge rule (contactsync/merge.py), the
specification: random updates, delivered in random batches and orders, some more than once,
leave the contact, its sequences and markers, its identities and the events exactly as the pure
function folded over the same deliveries says. Real PostgreSQL; SQLite runs the same Python
merge through other statements and is covered by the apply tests."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from contactsync.batch_apply import apply_batch
from contactsync.contacts import state_of
from contactsync.db import Database
from contactsync.identities import identities_of
from contactsync.merge import MAX_MARKERS, ContactState, merge
from contactsync.models import Contact, ContactIdentity, OutboxEvent
from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.updates import AcceptedUpdate
from tests.conftest import make_contact, make_tenant
from tests.integration.apply_support import accepted

# Enough keys that a few deletions pass MAX_MARKERS and fold into the floor.
MANY_KEYS = [f"k{i}" for i in range(MAX_MARKERS + 20)]
SAFE = 2**53 - 1
values = (
    st.text(alphabet="aé\u00e9b", max_size=2)
    | st.integers(min_value=-SAFE, max_value=SAFE)
    | st.floats(min_value=-SAFE, max_value=SAFE, allow_nan=False)
    | st.booleans()
)
custom = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.none() | values, max_size=3)
# A patch that removes many keys at once (most never set): their markers pass the cap.
sweeps = st.lists(st.sampled_from(MANY_KEYS), min_size=30, max_size=70, unique=True).map(
    lambda keys: dict.fromkeys(keys)
)
emails = st.sampled_from(["ann@example.com", "bob@example.com", None])
patches = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["Ann", "Bob"]),
    "email": emails,
    "phone": st.sampled_from(["+1 555", None]),
    "company": st.sampled_from(["Acme", "Élan", None]),
    "position": st.sampled_from(["CTO", None]),
    "linkedin_url": st.sampled_from(["https://www.linkedin.com/in/ann", None]),
    "tags": st.lists(st.sampled_from(["x", "y", "z"]), max_size=3, unique=True),
    "custom_fields": custom | sweeps,
    "external_ids": st.dictionaries(
        st.sampled_from(["hubspot", "salesforce"]), st.sampled_from(["51", "52", None]),
        max_size=2,
    ),
})


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[int, dict[str, Any]]], list[list[int]]]:
    """Updates (distinct sequences) and the batches that deliver them: every update at least
    once, some twice or more, in any order."""
    ups = draw(st.lists(patches, min_size=1, max_size=8))
    seqs = draw(st.lists(st.integers(1, 10_000), min_size=len(ups), max_size=len(ups),
                         unique=True))
    order = list(range(len(ups))) + draw(st.lists(st.integers(0, len(ups) - 1), max_size=4))
    order = draw(st.permutations(order))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=4)))
    batches = [order[a:b] for a, b in itertools.pairwise([0, *cuts, len(order)]) if a < b]
    return list(zip(seqs, ups, strict=True)), batches


_counter = itertools.count()


def _spec(
    start: ContactState, ups: list[tuple[int, dict[str, Any]]], batches: list[list[int]]
) -> tuple[ContactState, dict[str, dict[str, Any]]]:
    """The pure rule over the same deliveries: each batch in sequence order, an update
    delivered again changing nothing. Return the state and the changes of each update that
    changed something, by update index."""
    state = start
    done: set[int] = set()
    changes: dict[str, dict[str, Any]] = {}
    for batch in batches:
        for index in sorted(set(batch), key=lambda i: ups[i][0]):
            if index in done:
                continue
            done.add(index)
            seq, patch = ups[index]
            result = merge(state, patch, seq)
            state = result.state
            if result.changes:
                changes[str(index)] = {
                    name: {"old": c.old, "new": c.new} for name, c in result.changes.items()
                }
    return state, changes


@pytest.fixture
def pg(db: Database, backend: str) -> Database:
    if backend != "postgresql":
        pytest.skip("the property is PostgreSQL's; SQLite runs the Python statements")
    return db


def events_of(session: Session, redis: Redis, contact_id: str) -> list[dict[str, Any]]:
    """Return the contact's events, from the outbox and from the stream, once each by id.

    A running worker's relay (of another test's stack, on the same database) may publish and
    delete committed outbox rows at any time: what left the outbox is on the stream already,
    so the outbox is read first, then the stream.
    """
    found: dict[str, dict[str, Any]] = {}
    for payload in session.scalars(select(OutboxEvent.payload).order_by(OutboxEvent.id)):
        event = orjson.loads(payload)
        found[event["id"]] = event
    for _, entry in redis.xrange(Settings().events_stream):
        event = orjson.loads(entry[b"event"])
        found.setdefault(event["id"], event)
    return [e for e in found.values() if e["contact_id"] == contact_id]


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=deliveries())
def test_postgres_path_matches_the_pure_merge(
    pg: Database, redis_client: Redis,
    case: tuple[list[tuple[int, dict[str, Any]]], list[list[int]]],
) -> None:
    ups, batches = case
    tenant = make_tenant(pg, f"merge-{next(_counter)}")
    contact_id = make_contact(pg, tenant.account_id, email="old@example.com", tags=["t"],
                              custom_fields={"a": 1})
    with pg.reading() as session:
        row = session.get(Contact, contact_id)
        assert row is not None
        start = state_of(row)
    updates = [
        accepted(tenant.account_id, contact_id, patch, seq=seq, update_id=f"upd_p{next(_counter)}")
        for seq, patch in ups
    ]
    index_of = {u.update_id: str(i) for i, u in enumerate(updates)}
    for batch in batches:
        chosen: list[AcceptedUpdate] = [updates[i] for i in batch]
        with pg.unit_of_work() as session:
            outcomes = apply_batch(session, chosen, utcnow(), with_commit=True)  # as the worker
        assert all(o.status in ("applied", "noop") for o in outcomes), outcomes

    expected, expected_changes = _spec(start, ups, batches)
    with pg.reading() as session:
        row = session.get(Contact, contact_id)
        assert row is not None
        stored = state_of(row)
        held = {(r.key, r.field) for r in session.scalars(
            select(ContactIdentity).where(ContactIdentity.contact_id == contact_id)
        )}
        mine = events_of(session, redis_client, contact_id)
    assert dict(stored.fields) == dict(expected.fields)
    assert stored.tags == expected.tags
    assert dict(stored.custom_fields) == dict(expected.custom_fields)
    # JSON tells 1, 1.0 and true apart, where Python's == does not.
    assert {k: type(v) for k, v in stored.custom_fields.items()} == {
        k: type(v) for k, v in expected.custom_fields.items()
    }
    assert dict(stored.external_ids) == dict(expected.external_ids)
    assert dict(stored.field_seqs) == dict(expected.field_seqs)  # markers and floors too
    fields = {n: expected.fields.get(n) for n in ("email", "linkedin_url")}
    assert held == {(k, n) for n, k in identities_of(fields, dict(expected.external_ids)).items()}
    # One contact.updated per update that changed something, with exactly those changes.
    assert all(p["type"] == "contact.updated" for p in mine)
    assert {index_of[p["update_id"]]: p["changes"] for p in mine} == expected_changes
    assert len(mine) == len(expected_changes)
