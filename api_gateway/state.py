"""What a gateway process holds for its lifetime, and the dependency that hands it out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from api_gateway.key_cache import KeyCache
from api_gateway.publisher import Publisher
from api_gateway.waiter import ResultWaiter
from contactsync.db import Database
from contactsync.queue.accept import Enqueuer
from contactsync.settings import Settings


@dataclass
class Gateway:
    settings: Settings
    db: Database
    redis: Redis
    enqueuer: Enqueuer
    publisher: Publisher
    waiter: ResultWaiter
    keys: KeyCache


async def get_gateway(request: Request) -> Gateway:
    # async: FastAPI runs a plain `def` dependency in a thread, a costly hop on every request
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
