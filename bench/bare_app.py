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


if __name__ == "__main__":
    # Served as our gateway is (api_gateway/processes.py: a socket of its own per process),
    # so that the two differ in what they do per request, not in how connections are spread.
    import argparse

    from api_gateway import processes

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    config = {"app": "bench.bare_app:app", "host": "127.0.0.1", "port": args.port,
              "log_level": "warning", "access_log": False}
    raise SystemExit(processes.serve(config, args.workers, stop_timeout=10))
