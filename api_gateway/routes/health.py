"""Liveness, readiness and metrics; none needs a key."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api_gateway.errors import error_response
from api_gateway.http_metrics import exposition
from api_gateway.responses import JSONResponse
from api_gateway.state import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=None)
async def healthz() -> JSONResponse:
    """Answer while the process is alive."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=None)
async def readyz(gateway: GatewayDep) -> JSONResponse:
    """Answer 200 when Redis and the database answer, else 503."""

    def ping_db() -> None:
        with gateway.db.reading() as session:
            session.execute(text("SELECT 1"))

    checks: dict[str, str] = {}
    for name, probe in (("redis", gateway.redis.ping()), ("database", run_in_threadpool(ping_db))):
        try:
            await asyncio.wait_for(probe, timeout=2)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable ({type(exc).__name__})"
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return error_response(
        503, "SERVICE_UNAVAILABLE", "Not ready.", {"checks": checks, "retry_after": 1},
        {"Retry-After": "1"},
    )


@router.get("/metrics", response_model=None, response_class=PlainTextResponse)
async def metrics() -> Response:
    """Return Prometheus metrics in the text format."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
