"""Update records: what became of an accepted update."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from api_gateway.auth import require
from api_gateway.responses import JSONResponse, error_responses, ok
from api_gateway.state import GatewayDep
from contactsync import names
from contactsync.errors import NotFound
from contactsync.keys import Principal
from contactsync.models import UpdateRecord
from contactsync.schemas import UpdateRecordEnvelope
from contactsync.timeutil import isoformat
from contactsync.updates import AcceptedUpdate

UPDATE_ID = re.compile(r"upd_[A-Za-z0-9]{1,36}")  # fits update_records.update_id

router = APIRouter(prefix="/external/v1", tags=["updates"])

Reader = Annotated[Principal, Depends(require("contacts:read"))]


def record_to_dict(record: UpdateRecord) -> dict[str, Any]:
    """Return the public update record of a finished update."""
    return {
        "update_id": record.update_id,
        "contact_id": record.contact_id,
        "status": record.status,
        "received_at": isoformat(record.received_at),
        "applied_at": isoformat(record.applied_at) if record.applied_at else None,
        "changed_fields": list(record.changed_fields),
        "error": record.error,
    }


@router.get(
    "/updates/{update_id}",
    response_model=None,
    responses={200: {"model": UpdateRecordEnvelope}, **error_responses(403, 404)},
)
async def read_update(update_id: str, principal: Reader, gateway: GatewayDep) -> JSONResponse:
    """Return the status of one accepted update."""
    if not UPDATE_ID.fullmatch(update_id):
        raise NotFound("Update not found.")  # before Redis and the database
    # Redis first: a worker records the update in the database before dropping its body.
    raw = await gateway.redis.get(names.update_body_key(update_id))
    if raw is not None:
        try:
            update = AcceptedUpdate.from_json(raw)
        except (TypeError, ValueError):  # a corrupt body: it cannot show whose it is
            raise NotFound("Update not found.") from None
        if update.account_id == principal.account_id:
            return ok(update.queued_record())
        raise NotFound("Update not found.")

    def load() -> dict[str, Any] | None:
        with gateway.db.reading() as session:
            record = session.get(UpdateRecord, update_id)
            if record is None or record.account_id != principal.account_id:
                return None
            return record_to_dict(record)

    data = await run_in_threadpool(load)
    if data is None:
        raise NotFound("Update not found.")
    return ok(data)
