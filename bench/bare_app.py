"""The baseline gateway: a bare FastAPI PUT that validates the same body and answers 202."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from contactsync.schemas import ContactUpdate

app = FastAPI()


class Accepted(BaseModel):
    success: bool
    contact_id: str


@app.put("/external/v1/contacts/{contact_id}", status_code=202)
async def update(contact_id: str, body: ContactUpdate) -> Accepted:
    """Validate and answer; no key check, no queue."""
    body.patch()
    return Accepted(success=True, contact_id=contact_id)
