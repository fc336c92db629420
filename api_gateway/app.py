"""The application factory: lifespan resources, routes, error mapping."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from api_gateway import errors, openapi
from api_gateway.backlog import BacklogGauge
from api_gateway.edge import Edge, GatewayApp
from api_gateway.key_cache import KeyCache
from api_gateway.publisher import Publisher
from api_gateway.ratelimit import RateLimiter
from api_gateway.responses import JSONResponse
from api_gateway.routes import (
    batch,
    contact_update,
    contacts,
    health,
    updates,
    upsert,
    webhooks,
)
from api_gateway.state import Gateway
from api_gateway.waiter import ResultWaiter
from contactsync.db import Database
from contactsync.logs import configure as configure_logging
from contactsync.queue.accept import Enqueuer
from contactsync.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> GatewayApp:
    """Build the gateway; it connects to Redis and the database when it starts serving."""
    settings = settings or get_settings()
    # Here, not at import: uvicorn has set up its own logging by the time it calls the factory.
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings)
        redis = Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2,
            health_check_interval=30, max_connections=200,
        )
        backlog = app.state.backlog = BacklogGauge(
            redis, max_backlog=settings.max_backlog, interval=settings.backlog_refresh_seconds,
            max_per_message=settings.publish_max_batch,
            max_account_backlog=settings.max_account_backlog,
        )
        enqueuer = Enqueuer(
            redis, idempotency_ttl=settings.idempotency_ttl_seconds,
            max_batch=settings.publish_max_batch,
            origin=f"gateway@{settings.instance_name}:{os.getpid()}",
            account_limit=backlog.account_limit,
        )
        publisher = Publisher(
            enqueuer, linger_seconds=settings.publish_linger_ms / 1000,
            wait_linger_seconds=settings.publish_wait_linger_ms / 1000,
            max_batch=settings.publish_max_batch, backlogged=backlog.backlogged,
        )
        waiter = ResultWaiter(redis)
        app.state.gateway = Gateway(
            settings=settings, db=db, redis=redis, enqueuer=enqueuer, publisher=publisher,
            waiter=waiter, keys=KeyCache(db, settings.key_cache_seconds),
        )
        app.state.rate_limiter = RateLimiter(
            redis, settings.rate_limit_per_second, settings.update_rate_limit_per_second
        )
        publisher.start()
        await waiter.start()
        await waiter.ready()
        await backlog.start()
        # What exists now lives as long as the process: out of the collector's sight, a full
        # collection no longer walks the whole application (an 80 ms stall every so often
        # under load, which was the gateway's p99).
        gc.collect()  # what start-up threw away goes first, not into the frozen set
        gc.freeze()
        try:
            yield
        finally:
            await backlog.stop()
            await publisher.stop()
            await waiter.stop()
            await redis.aclose()
            db.dispose()

    app = FastAPI(
        title="contactsync",
        version="1.0.0",
        description="Queue-backed contact updates: PUT a partial update, a worker applies it.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    errors.install(app)
    openapi.install(app)
    app.add_middleware(Edge)
    app.include_router(batch.router)
    app.include_router(contact_update.router)
    app.include_router(contacts.router)
    app.include_router(updates.router)
    app.include_router(upsert.router)
    app.include_router(webhooks.router)
    app.include_router(health.router)
    return GatewayApp(app)
