"""The gateway's edge: what every request passes (its metrics and log line, its rate-limit
headers, the 500 envelope for an error nothing else answered), and the entry point that sends
the busiest route straight to its endpoint.

One send wrapper does the first three, because every layer of ASGI middleware costs each
request a call, a closure and a wrapped `send`: on a gateway meant for thousands of requests a
second that adds up. For the same reason `PUT /external/v1/contacts/{id}` does not go through
FastAPI at all: FastAPI's own layers (its error and telemetry middlewares, routing, request
handling) cost each request about two thirds as much again as everything else it does.
Measured against the same gateway with the PUT routed by FastAPI (`python -m bench.variants
ours plain`, docs/benchmarks.md, 2026-12-04): 1.6-1.7 times the PUTs per CPU-second, about
170 µs of CPU a request against 280 µs. It is the same endpoint function FastAPI documents
in the OpenAPI document, and its errors get the same handlers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_gateway.errors import answer, error_response, log_internal
from api_gateway.http_metrics import ACCESS_LOG, count_request, route_of
from api_gateway.ratelimit import STATE_KEY
from api_gateway.routes import contact_update

CONTACT_PATH = re.compile(
    "^" + contact_update.ROUTE_PATH.replace("{contact_id}", "(?P<contact_id>[^/]+)") + "$"
)

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class GatewayApp:
    """The ASGI application the server runs: the contact PUT straight to its endpoint, every
    other request (and the lifespan) to FastAPI."""

    def __init__(self, api: FastAPI) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "PUT":
            match = CONTACT_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["app"] = self.api  # what FastAPI would set: the request reaches its state
                contact_id = match["contact_id"]

                async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
                    await _update_contact(contact_id, scope, receive, send)

                await finish(scope, receive, send, endpoint, contact_update.ROUTE_PATH)
                return
        await self.api(scope, receive, send)


class Edge:
    """FastAPI's innermost middleware: every request FastAPI serves is finished here.

    Starlette's own handler for `Exception` answers and then re-raises, so the server drops
    the keep-alive connection under a response that never said `Connection: close`: the
    client's next request on it fails. Catching here, inside that handler, ends it cleanly.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await finish(scope, receive, send, self.app, None)


async def finish(
    scope: Scope, receive: Receive, send: Send, handler: Handler, route: str | None
) -> None:
    """Run `handler`: count and log its request, add `X-RateLimit-*` once a key spent a token,
    and answer an unexpected error with the 500 envelope."""
    started = time.perf_counter()
    state: dict[str, Any] = scope.setdefault("state", {})
    status = 0

    async def send_wrapper(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            token = state.get(STATE_KEY)
            if token is not None and token.decision is not None:
                message["headers"] = [*message.get("headers", ()), *token.decision.headers()]
        await send(message)

    try:
        await handler(scope, receive, send_wrapper)
    except Exception as exc:
        if status:
            raise  # too late for an envelope: let the server close the connection
        log_internal(exc)
        response = error_response(500, "INTERNAL_ERROR", "An internal error occurred.")
        await response(scope, receive, send_wrapper)
    finally:
        route = route or route_of(scope)
        elapsed = time.perf_counter() - started
        count_request(scope["method"], route, status or 500, elapsed)
        if ACCESS_LOG.isEnabledFor(logging.INFO):  # nothing is built when filtered out
            ACCESS_LOG.info("request", extra={
                "method": scope["method"], "route": route, "http_status": status or 500,
                "duration_ms": round(elapsed * 1000, 2),
            })


async def _update_contact(contact_id: str, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    try:
        response = await contact_update.update_contact(contact_id, request)
    except Exception as exc:
        answered = await answer(request, exc)
        if answered is None:
            raise
        response = answered
    await response(scope, receive, send)
