"""Send a batch of signed deliveries to one endpoint, concurrently, on a pooled HTTP client.

One event loop and one httpx.AsyncClient per worker process, made after fork and kept:
connections to an endpoint stay open from one task to the next (keep-alive). No redirect is
followed (a redirect could lead to an address the URL check refused); an answer's body is
read up to BODY_LIMIT bytes and dropped, so a receiver cannot make us read megabytes; each
request has `webhook_timeout_seconds` in all, connecting included.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from datetime import datetime

import httpx

from contactsync.settings import Settings
from contactsync.timeutil import utcnow
from contactsync.webhook_claims import Outgoing
from contactsync.webhook_signing import Signer

BODY_LIMIT = 4096  # bytes of an answer read at most
USER_AGENT = "contactsync-webhooks/1"


@dataclass(frozen=True)
class Sent:
    delivery: Outgoing
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None


class Sender:
    """This process's loop and client."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_seconds, follow_redirects=False,
            limits=httpx.Limits(max_connections=settings.webhook_connections,
                                max_keepalive_connections=settings.webhook_connections),
        )
        # Requests are built here, not by the client (`client.stream` merges its URL, headers
        # and cookies into each: 10 to 20 % of the client's CPU per delivery, measured by
        # bench/http_clients.py), so what it would add is added here: timeouts, user agent.
        self.extensions = {"timeout": self.client.timeout.as_dict()}
        # No more requests in the pool than connections: httpcore looks over every queued
        # request and every connection at each request's turn, so a queue costs CPU.
        self.slots = asyncio.Semaphore(settings.webhook_connections)
        self.timeout = settings.webhook_timeout_seconds

    def send(self, url: str, signer: Signer,
             deliveries: list[Outgoing]) -> tuple[list[Sent], list[Outgoing]]:
        """POST the deliveries to `url`, `webhook_connections` at a time; return each sent
        one's outcome, and those not started within the timeout (not attempted).

        A batch so ends within twice the timeout, as the lease's check in settings assumes,
        however slowly the receiver answers: what it could not take is claimed again.
        """
        outcomes = self.loop.run_until_complete(
            self._send_all(httpx.URL(url), signer, deliveries))
        sent = [o for o in outcomes if o is not None]
        return sent, [d for d, o in zip(deliveries, outcomes, strict=True) if o is None]

    async def _send_all(self, url: httpx.URL, signer: Signer,
                        deliveries: list[Outgoing]) -> list[Sent | None]:
        start_by = time.monotonic() + self.timeout
        return list(await asyncio.gather(
            *(self._post(url, signer, d, start_by) for d in deliveries)
        ))

    async def _post(self, url: httpx.URL, signer: Signer, delivery: Outgoing,
                    start_by: float) -> Sent | None:
        async with self.slots:
            if time.monotonic() > start_by:
                return None
            return await self._post_now(url, signer, delivery)

    async def _post_now(self, url: httpx.URL, signer: Signer, delivery: Outgoing) -> Sent:
        body = delivery.payload.encode()
        at = utcnow()
        headers = signer.headers(delivery.event_id, body, at)
        headers["user-agent"] = USER_AGENT
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                request = httpx.Request("POST", url, content=body, headers=headers,
                                        extensions=self.extensions)
                response = await self.client.send(request, stream=True)
                try:
                    status = response.status_code
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= BODY_LIMIT:
                            break
                finally:
                    await response.aclose()
            if not 200 <= status < 300:
                error = _status_error(status)
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            error = _transport_error(exc)
        duration_ms = round((time.perf_counter() - started) * 1000)
        return Sent(delivery, at, duration_ms, status, error)


    def close(self) -> None:
        """Close the connections and the loop (a test's sender; a worker's lives with it)."""
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def _status_error(status: int) -> str:
    if 300 <= status < 400:
        return f"answered HTTP {status}, a redirect (not followed)"
    return f"answered HTTP {status}"


def _transport_error(exc: httpx.HTTPError) -> str:
    # Plain words, never the request: its headers hold the signature.
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection closed without a valid HTTP answer"
    return f"HTTP error ({type(exc).__name__})"


_sender: Sender | None = None
_pid: int | None = None


def get_sender(settings: Settings) -> Sender:
    """Return this process's sender, made on first use after a fork."""
    global _sender, _pid
    if _sender is None or _pid != os.getpid():
        _sender = Sender(settings)
        _pid = os.getpid()
    return _sender
