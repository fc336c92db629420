"""The gateway's Prometheus metrics, and the ASGI middleware that counts requests."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "contactsync_gateway_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "contactsync_gateway_request_seconds", "Time to answer a request", ["method", "route"]
)
ENQUEUE_SECONDS = Histogram(
    "contactsync_gateway_enqueue_seconds", "Time from validation to the update being in Redis"
)
WAIT_OUTCOMES = Counter(
    "contactsync_gateway_wait_outcomes_total",
    "Default-mode PUTs by how their wait ended", ["outcome"],
)


class MetricsMiddleware:
    """Count every request by its route template (never the raw path: ids are unbounded)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_of(scope)
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - started)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    if route is None and "endpoint" in scope:
        # Routes that are not API routes (the OpenAPI document, the docs) leave no "route"
        # in the scope, only their endpoint: find the route by it.
        routes = getattr(scope.get("router"), "routes", ())
        route = next((r for r in routes if getattr(r, "endpoint", None) is scope["endpoint"]), None)
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
