"""The one middleware every request passes: its metrics and log line, its rate-limit headers,
and the 500 envelope for an error nothing else answered.

One send wrapper does all three, because every layer of ASGI middleware costs each request a
call, a closure and a wrapped `send`: on a gateway meant for thousands of requests a second
that adds up. For the same reason the busiest route, `PUT /external/v1/contacts/{id}`, is
served from here: FastAPI's routing and exception layers cost each request more than the
route's own work. It is the same endpoint function FastAPI documents in the OpenAPI document,
answering errors with the same handlers.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_gateway.errors import answer, error_response, log_internal
from api_gateway.metrics import ACCESS_LOG, REQUEST_SECONDS, REQUESTS, route_of
from api_gateway.ratelimit import STATE_KEY
from api_gateway.routes import contact_update

CONTACT_PATH = re.compile(
    "^" + contact_update.ROUTE_PATH.replace("{contact_id}", "(?P<contact_id>[^/]+)") + "$"
)


class Edge:
    """Count, log and finish every HTTP request; add `X-RateLimit-*` once a key spent a token.

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
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                decision = state.get(STATE_KEY)
                if decision is not None:
                    message["headers"] = [*message.get("headers", ()), *decision.headers()]
            await send(message)

        route = None
        try:
            if scope["method"] == "PUT" and (match := CONTACT_PATH.match(scope["path"])):
                route = contact_update.ROUTE_PATH
                await _update_contact(match["contact_id"], scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if status:
                raise  # too late for an envelope: let the server close the connection
            log_internal(exc)
            response = error_response(500, "INTERNAL_ERROR", "An internal error occurred.")
            await response(scope, receive, send_wrapper)
        finally:
            route = route or route_of(scope)
            elapsed = time.perf_counter() - started
            REQUESTS.labels(scope["method"], route, str(status or 500)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(elapsed)
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
