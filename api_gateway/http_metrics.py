"""The gateway's Prometheus metrics (`api_gateway.edge` counts and logs each request).

Under `contactsync gateway --workers N` every process writes its samples to a directory that
the command makes (prometheus-client's multiprocess mode), and /metrics sums them all.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import Scope

ACCESS_LOG = logging.getLogger("contactsync.access")

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
KEY_LOOKUPS = Counter(
    "contactsync_gateway_key_lookups_total",
    "API keys looked up in the database, by whether a live key was found", ["result"],
)
KEY_LOOKUP_QUERIES = Counter(
    "contactsync_gateway_key_lookup_queries_total", "Database queries that looked keys up"
)


@lru_cache(maxsize=1024)
def _requests(method: str, route: str, status: int) -> Counter:
    return REQUESTS.labels(method, route, str(status))


@lru_cache(maxsize=1024)
def _request_seconds(method: str, route: str) -> Histogram:
    return REQUEST_SECONDS.labels(method, route)


def count_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its time.

    The labelled series are kept: `labels()` takes a lock and checks its arguments, which
    per request cost about as much as the count itself.
    """
    _requests(method, route, status).inc()
    _request_seconds(method, route).observe(seconds)


def route_of(scope: Scope) -> str:
    """Return the route template that served a request (never the raw path: ids are unbounded)."""
    route = scope.get("route")
    if route is None and "endpoint" in scope:
        # Routes that are not API routes (the OpenAPI document, the docs) leave no "route"
        # in the scope, only their endpoint: find the route by it.
        routes = getattr(scope.get("router"), "routes", ())
        route = next((r for r in routes if getattr(r, "endpoint", None) is scope["endpoint"]), None)
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


@lru_cache(maxsize=1)
def _all_processes() -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> bytes:
    """Return the metrics in the text format: every gateway process's, when there are several."""
    if getattr(values.ValueClass, "_multiprocess", False):
        return generate_latest(_all_processes())
    return generate_latest()
