"""POST /contacts's write: a create that loses the race for an identity is a Conflict naming
the winner, not a 500, and leaves no contact behind."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from contactsync.contacts import create_contact
from contactsync.db import Database
from contactsync.errors import Conflict
from contactsync.models import Contact
from tests.conftest import make_tenant
from tests.support import wait_blocked


def test_a_create_racing_for_an_email_ends_in_conflict(db: Database) -> None:
    tenant = make_tenant(db, "acme")
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with db.unit_of_work() as session:
                create_contact(session, tenant.account_id, {"name": "B", "email": "X@example.com"})
        except BaseException as exc:
            errors.append(exc)

    # The second looks the email up while the first is not committed: on PostgreSQL it finds
    # it free and only the identity index stops it; on SQLite it waits for the write lock.
    with db.unit_of_work() as session:
        first = create_contact(session, tenant.account_id, {"name": "A", "email": "x@example.com"})
        session.flush()
        racer = threading.Thread(target=second)
        racer.start()
        assert racer.native_id is not None
        wait_blocked(db, racer.native_id, racer.is_alive)
    racer.join(30)
    (error,) = errors
    assert isinstance(error, Conflict)
    assert error.details == {"field": "email", "contact_id": first.id}
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 1
