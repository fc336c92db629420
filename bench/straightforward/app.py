"""The straightforward design's API: check the key, validate, `apply_async`, answer 202."""

from __future__ import annotations

import hashlib
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from bench.straightforward.tasks import update_contact
from contactsync.models import ApiKey

engine = create_engine(os.environ["DATABASE_URL"])
Session = sessionmaker(engine)

app = FastAPI()


class ContactChanges(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    email: str | None = Field(None, max_length=254)
    phone: str | None = Field(None, max_length=32)
    company: str | None = Field(None, max_length=200)
    position: str | None = Field(None, max_length=200)
    tags: list[str] | None = None
    custom_fields: dict[str, Any] | None = None


def account_of(x_api_key: Annotated[str, Header()]) -> str:
    """Return the account of a live key with write permission, or answer 401/403."""
    digest = hashlib.sha256(x_api_key.encode()).hexdigest()
    with Session() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if key is None or key.revoked_at is not None:
        raise HTTPException(401, "Invalid API key")
    if "contacts:write" not in key.permissions:
        raise HTTPException(403, "Insufficient permissions")
    return key.account_id


@app.put("/external/v1/contacts/{contact_id}", status_code=202)
def put_contact(
    contact_id: str, body: ContactChanges, account_id: Annotated[str, Depends(account_of)]
) -> dict[str, Any]:
    """Queue the update; a worker applies it."""
    changes = body.model_dump(exclude_unset=True)
    update_contact.apply_async(args=[account_id, contact_id, changes])
    return {"success": True, "contact_id": contact_id, "status": "queued"}


if __name__ == "__main__":
    # Served as our gateway is: the same launcher, process count and uvicorn options.
    import argparse

    from api_gateway import processes

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    config = {"app": "bench.straightforward.app:app", "host": "127.0.0.1", "port": args.port,
              "log_level": "warning", "access_log": False}
    raise SystemExit(processes.serve(config, args.workers, stop_timeout=10))
