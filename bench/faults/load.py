"""A sustained load of async updates through the real gateway, every request logged.

Each contact has one client (a thread) sending random updates one after another, each with an
Idempotency-Key of its own: after the run, a request that got no 2xx can still be traced to
the update id the gateway reserved for it, should that update have been applied anyway. Every
loop is bounded in count and in time.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

ASYNC = {"Prefer": "respond-async"}
CLIENT_TIMEOUT = 10.0  # past this, a request counts as a hang
TAG_POOL = [f"tag-{i}" for i in range(12)]
CUSTOM_KEYS = ["plan", "score", "vip", "region", "owner", "stage"]
FIELDS = ("name", "email", "phone", "company", "position", "linkedin_url", "tags",
          "custom_fields")


def random_patch(rng: random.Random, contact_id: str) -> dict[str, Any]:
    """Return a random update body for one contact: one to four fields, values already in
    canonical form.

    Values are small pools on purpose, so that some updates change nothing. Emails and
    LinkedIn URLs are the contact's own: identities are unique per account, and a value two
    contacts wanted would end one update `conflict`, which is not what the faults test.
    """
    patch: dict[str, Any] = {}
    for name in rng.sample(FIELDS, k=rng.randint(1, 4)):
        n = rng.randrange(8)
        if name == "name":
            patch[name] = f"Name {n}"
        elif name == "email":
            patch[name] = None if n == 0 else f"user{n}.{contact_id}@example.com"
        elif name == "phone":
            patch[name] = None if n == 0 else f"+1 555 010{n}"
        elif name in ("company", "position"):
            patch[name] = None if n == 0 else f"{name.title()} {n}"
        elif name == "linkedin_url":
            patch[name] = None if n == 0 else f"https://www.linkedin.com/in/{contact_id}-{n}"
        elif name == "tags":
            patch[name] = rng.sample(TAG_POOL, k=rng.randrange(4))
        else:
            values: list[Any] = [None, n, f"v{n}", n % 2 == 0]
            keys = rng.sample(CUSTOM_KEYS, k=rng.randint(1, 3))
            patch[name] = {k: rng.choice(values) for k in keys}
    return patch


@dataclass
class Sent:
    """One request: what it carried and how the gateway answered."""

    contact_id: str
    patch: dict[str, Any]
    idempotency_key: str
    client: int = 0
    status: int | None = None  # None: no HTTP answer (transport error or client timeout)
    update_id: str | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class LoadLog:
    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Sent) -> None:
        with self.lock:
            self.sent.append(item)

    def count(self) -> int:
        with self.lock:
            return len(self.sent)

    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.status is not None and 200 <= s.status < 300]


class Load:
    """Send `total` updates spread over `contact_ids`, at about `rate` per second in all."""

    def __init__(
        self, base_urls: Sequence[str], key: str, contact_ids: Sequence[str], *, total: int,
        rate: float, seed: int = 1, max_seconds: float = 600,
    ) -> None:
        self.base_urls = list(base_urls)
        self.key = key
        self.contact_ids = list(contact_ids)
        self.total = total
        self.rate = rate
        self.seed = seed
        self.max_seconds = max_seconds
        self.log = LoadLog()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.started_at = 0.0

    def start(self) -> None:
        self.started_at = time.monotonic()
        per_client = [self.total // len(self.contact_ids)] * len(self.contact_ids)
        for i in range(self.total % len(self.contact_ids)):
            per_client[i] += 1
        for index, (contact_id, count) in enumerate(
            zip(self.contact_ids, per_client, strict=True)
        ):
            thread = threading.Thread(
                target=self._client, args=(index, contact_id, count), daemon=True,
                name=f"load-{index}",
            )
            self._threads.append(thread)
            thread.start()

    def wait_sent(self, count: int, timeout: float = 120) -> None:
        """Return once `count` requests have been answered (or failed)."""
        deadline = time.monotonic() + timeout
        while self.log.count() < count and time.monotonic() < deadline:
            if not any(t.is_alive() for t in self._threads):
                return
            time.sleep(0.02)

    def join(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else self.max_seconds)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stop()

    def stop(self) -> None:
        """Stop every client after its request in flight."""
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT + 5)

    def _client(self, index: int, contact_id: str, count: int) -> None:
        rng = random.Random(self.seed * 7919 + index)
        interval = len(self.contact_ids) / self.rate  # each client's share of the rate
        deadline = self.started_at + self.max_seconds
        base_url = self.base_urls[index % len(self.base_urls)]
        headers = {"X-API-Key": self.key, **ASYNC}
        with httpx.Client(base_url=base_url, headers=headers, timeout=CLIENT_TIMEOUT) as http:
            next_at = time.monotonic() + rng.uniform(0, interval)
            for _ in range(count):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at = max(next_at + interval, time.monotonic() - 1)
                self.log.add(self._send(http, rng, contact_id, index))

    def _send(
        self, http: httpx.Client, rng: random.Random, contact_id: str, client: int
    ) -> Sent:
        item = Sent(contact_id, random_patch(rng, contact_id), f"faults-{uuid.uuid4().hex}", client)
        started = time.monotonic()
        try:
            response = http.put(
                f"/external/v1/contacts/{contact_id}", json=item.patch,
                headers={"Idempotency-Key": item.idempotency_key},
            )
            item.status = response.status_code
            if 200 <= response.status_code < 300:
                item.update_id = response.json()["data"]["update_id"]
            elif response.status_code == 503 and "retry-after" not in response.headers:
                item.error = "503 without Retry-After"
            elif response.status_code != 503:
                item.error = response.text[:300]
        except httpx.HTTPError as exc:
            item.error = f"{type(exc).__name__}: {exc}"[:300]
        item.seconds = time.monotonic() - started
        return item
