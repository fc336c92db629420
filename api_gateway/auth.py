"""Authentication: the key from `X-API-Key` or `Authorization: Bearer`, and permissions."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request

from api_gateway.ratelimit import Token
from contactsync.errors import InsufficientPermissions, InvalidApiKey, MissingApiKey
from contactsync.keys import Principal

_MAX_KEY_LENGTH = 256


def presented_key(request: Request) -> str | None:
    """Return the key the request carries, if any.

    Every credential the request carries (each `X-API-Key` header, each `Authorization`
    header) must name one key: credentials that disagree are refused rather than one silently
    preferred, since a read-only and a read-write key would otherwise answer by their order.
    """
    keys = [key for key in request.headers.getlist("x-api-key") if key]
    bearers = [_bearer(auth) for auth in request.headers.getlist("authorization")]
    if keys or any(bearers):
        keys += [bearer or "" for bearer in bearers]  # beside a key, Basic & co. cannot match
    if any(key != keys[0] for key in keys):
        raise InvalidApiKey("The request carries more than one API key, and they differ.")
    return keys[0] if keys else None


def _bearer(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def authenticate(request: Request) -> Principal:
    """Return who sent the request, from its key; 401 without a valid one."""
    key = presented_key(request)
    if key is None:
        raise MissingApiKey("An API key is required: send it in the X-API-Key header.")
    principal: Principal | None = None
    if len(key) <= _MAX_KEY_LENGTH:
        principal = await request.app.state.gateway.keys.lookup(key)
    if principal is None:
        raise InvalidApiKey("The API key is not valid or has been revoked.")
    return principal


def check_permission(principal: Principal, permission: str) -> None:
    if permission not in principal.permissions:
        raise InsufficientPermissions(f"This API key lacks the {permission} permission.")


async def authorize(request: Request, permission: str) -> Principal:
    """Return who sent the request if its key holds `permission`; spend one rate-limit token.

    The token comes first: every request a key makes spends from its bucket, and a key over
    its limit is answered 429 whatever else is wrong with the request.
    """
    principal = await authenticate(request)
    await Token(request, principal).spend()
    check_permission(principal, permission)
    return principal


def require(permission: str) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """Return a dependency that admits keys holding `permission`."""

    async def dependency(request: Request) -> Principal:
        return await authorize(request, permission)

    return dependency
