"""Upserts through apply_batch on real databases: find or create in the write's transaction,
per-field last writer wins, any order and any number of deliveries, tenancy."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from contactsync.batch_apply import Outcome, apply_batch
from contactsync.contacts import contact_to_dict
from contactsync.db import Database
from contactsync.identities import email_key
from contactsync.ids import contact_id_for, new_update_id
from contactsync.models import Contact
from contactsync.settings import Settings
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate
from tests.conftest import make_contact, make_tenant
from tests.integration.apply_support import contact, next_seq, outbox_mark, outbox_since, records

_tenants = itertools.count()


@pytest.fixture(scope="module")
def writer(settings: Settings) -> Iterator[Database]:
    """A database that takes the write lock up front, as the worker's does."""
    database = Database(settings)
    yield database
    database.dispose()


def upsert(
    account_id: str, patch: dict[str, Any], match_on: list[str] | None = None,
    seq: int | None = None,
) -> AcceptedUpdate:
    """Return an upsert as the gateway would have accepted it."""
    update_id = new_update_id()
    return AcceptedUpdate(
        update_id=update_id, account_id=account_id, contact_id=contact_id_for(update_id),
        seq=next_seq() if seq is None else seq, received_at=isoformat(utcnow()), patch=patch,
        queue="contacts.bulk", match_on=match_on or ["email"],
    )


def run(writer: Database, updates: list[AcceptedUpdate]) -> tuple[list[Outcome], list[dict]]:
    with writer.unit_of_work() as session:
        mark = outbox_mark(session)
        outcomes = apply_batch(session, updates, utcnow())
        events = [orjson.loads(row.payload) for row in outbox_since(session, mark)]
    return outcomes, events


def contacts_of(db: Database, account_id: str) -> list[dict[str, Any]]:
    with db.reading() as session:
        rows = session.scalars(select(Contact).where(Contact.account_id == account_id))
        return [contact_to_dict(row) for row in rows]


def test_an_upsert_creates_then_the_next_one_updates(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    first = upsert(tenant.account_id, {"name": "Ann", "email": "Ann@Example.com",
                                       "tags": ["x"], "source": "linkedin"})
    [created], events = run(writer, [first])
    assert created.status == "created"
    made = contact_id_for(first.update_id)
    assert created.update.contact_id == made == records(db)[first.update_id].contact_id
    assert contact(db, made)["source"] == "linkedin"
    [event] = events
    assert event["type"] == "contact.created" and event["contact_id"] == made
    assert event["changes"] == {
        "name": {"old": None, "new": "Ann"}, "email": {"old": None, "new": "Ann@Example.com"},
        "tags": {"old": None, "new": ["x"]},
    }
    second = upsert(tenant.account_id, {"email": "ann@example.COM", "position": "CTO",
                                        "source": "csv"})
    [applied], events = run(writer, [second])
    assert applied.status == "applied" and records(db)[second.update_id].contact_id == made
    [event] = events
    assert event["type"] == "contact.updated" and event["changes"] == {
        "email": {"old": "Ann@Example.com", "new": "ann@example.COM"},  # its spelling, like PUT
        "position": {"old": None, "new": "CTO"}}
    assert contact(db, made)["source"] == "linkedin"  # set by the create only
    assert len(contacts_of(db, tenant.account_id)) == 1


def test_a_redelivered_create_makes_no_second_contact(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    first = upsert(tenant.account_id, {"name": "Ann", "email": "ann@example.com"})
    run(writer, [first])
    [again], events = run(writer, [first])
    assert again.duplicate and again.status == "created" and not events
    assert again.update.contact_id == contact_id_for(first.update_id)
    assert again.contact is not None and again.contact["email"] == "ann@example.com"
    assert len(contacts_of(db, tenant.account_id)) == 1


def test_one_batch_racing_for_a_new_email_makes_one_contact(
    db: Database, writer: Database
) -> None:
    tenant = make_tenant(db, "acme")
    items = [upsert(tenant.account_id, {"name": f"Ann {n}", "email": "ann@example.com"})
             for n in range(3)]
    outcomes, _ = run(writer, list(reversed(items)))
    assert [o.status for o in outcomes] == ["created", "applied", "applied"]
    [only] = contacts_of(db, tenant.account_id)
    assert only["id"] == contact_id_for(items[0].update_id) and only["name"] == "Ann 2"


def test_the_first_identity_that_finds_a_contact_decides(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    ann = make_contact(db, tenant.account_id, name="Ann", email="ann@example.com")
    bob = make_contact(db, tenant.account_id, name="Bob",
                       linkedin_url="https://www.linkedin.com/in/bob")
    by_crm = upsert(tenant.account_id, {"email": "ann@example.com",
                                         "external_ids": {"crm": "7"}},
                    ["external_ids.crm", "email"])
    [outcome], _ = run(writer, [by_crm])
    assert outcome.status == "applied" and outcome.update.contact_id == ann
    assert contact(db, ann)["external_ids"] == {"crm": "7"}
    # linkedin_url finds Bob, whose email would then be Ann's: a conflict naming Ann.
    clash = upsert(tenant.account_id, {"email": "ann@example.com",
                                        "linkedin_url": "http://linkedin.com/in/Bob/?trk=x"},
                   ["linkedin_url", "email"])
    [outcome], events = run(writer, [clash])
    assert outcome.status == "conflict" and outcome.update.contact_id == bob and not events
    assert outcome.error is not None
    assert outcome.error["details"] == {"field": "email", "contact_id": ann}
    assert contact(db, bob)["email"] is None


def test_a_create_without_a_name_fails_and_makes_nothing(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    nameless = upsert(tenant.account_id, {"email": "new@example.com"})
    [outcome], events = run(writer, [nameless])
    assert outcome.status == "failed" and not events
    assert outcome.error is not None and outcome.error["code"] == "VALIDATION_ERROR"
    assert contacts_of(db, tenant.account_id) == []


def test_an_upsert_never_matches_another_accounts_contact(
    db: Database, writer: Database
) -> None:
    acme, other = make_tenant(db, "acme"), make_tenant(db, "other")
    theirs = make_contact(db, acme.account_id, name="Ann", email="ann@example.com")
    mine = upsert(other.account_id, {"name": "Mine", "email": "ann@example.com"})
    [outcome], _ = run(writer, [mine])
    assert outcome.status == "created" and outcome.update.contact_id != theirs
    assert contact(db, theirs)["name"] == "Ann"
    assert [c["name"] for c in contacts_of(db, other.account_id)] == ["Mine"]


_EMAILS = ["a@example.com", "A@Example.com", "b@example.com", "c@example.com"]
_ITEM = st.fixed_dictionaries(
    {"name": st.sampled_from(["Ann", "Bob", "Cy"]), "email": st.sampled_from(_EMAILS)},
    optional={
        "company": st.sampled_from(["Acme", None]),
        "position": st.sampled_from(["CTO", "CEO"]),
        "tags": st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True),
        "custom_fields": st.dictionaries(st.sampled_from(["plan", "seats"]),
                                         st.sampled_from(["free", 3, None]), max_size=2),
    },
)


def _by_identity(db: Database, account_id: str) -> dict[str, dict[str, Any]]:
    found = {}
    for row in contacts_of(db, account_id):
        fields = {k: row[k] for k in ("name", "email", "company", "position", "tags",
                                      "custom_fields")}
        found[email_key(row["email"])] = fields
    return found


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(items=st.lists(_ITEM, min_size=1, max_size=6), order=st.randoms(use_true_random=False))
def test_upserts_in_any_order_any_number_of_times_end_in_the_same_contacts(
    database: Database, writer: Database, items: list[dict[str, Any]], order: random.Random,
) -> None:
    reference = make_tenant(database, f"ref-{next(_tenants)}").account_id
    shuffled = make_tenant(database, f"shuf-{next(_tenants)}").account_id
    seqs = [next_seq() for _ in items]
    for item, seq in zip(items, seqs, strict=True):  # each once, in sequence order
        run(writer, [upsert(reference, item, seq=seq)])
    deliveries = [upsert(shuffled, item, seq=seq) for item, seq in zip(items, seqs, strict=True)]
    deliveries += order.choices(deliveries, k=len(deliveries))  # some delivered again
    order.shuffle(deliveries)
    while deliveries:  # in batches of one to three, each its own transaction
        size = order.randint(1, 3)
        run(writer, deliveries[:size])
        deliveries = deliveries[size:]
    expected = _by_identity(database, reference)
    assert len(expected) == len({email_key(i["email"]) for i in items})
    assert _by_identity(database, shuffled) == expected
