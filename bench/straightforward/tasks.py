"""The straightforward design's worker: one Celery task per update."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from redis import Redis
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from bench.straightforward import EVENTS, QUEUE
from contactsync.models import Contact

REDIS_URL = os.environ["REDIS_URL"]
engine = create_engine(os.environ["DATABASE_URL"])
Session = sessionmaker(engine)
redis = Redis.from_url(REDIS_URL)

app = Celery("straightforward", broker=REDIS_URL)
app.conf.task_default_queue = QUEUE
app.conf.task_ignore_result = True


@app.task(name="straightforward.update_contact")  # type: ignore[untyped-decorator]
def update_contact(account_id: str, contact_id: str, changes: dict[str, Any]) -> None:
    """Apply a partial update: fields set, tags replaced, custom fields merged."""
    with Session() as session:
        contact = session.get(Contact, contact_id)
        if contact is None or contact.account_id != account_id:
            return
        for field, value in changes.items():
            if field == "custom_fields":
                merged = {**contact.custom_fields, **value}
                contact.custom_fields = {k: v for k, v in merged.items() if v is not None}
            else:
                setattr(contact, field, value)
        contact.updated_at = datetime.now(UTC)
        session.commit()
    event = {"type": "contact.updated", "contact_id": contact_id, "changes": changes}
    redis.xadd(EVENTS, {"data": json.dumps(event)})
