"""The webhook sender's HTTP pattern, client against client: CPU per request in this process.

`python -m bench.http_clients [--requests 3000] [--rounds 3] [--connections 1,2,4,8]`
starts `bench/receiver_app.py` and, in one process and one event loop, POSTs a signed
600-byte body `--requests` times per variant, at most `connections` in flight, reading at
most 4 KiB of each answer, as tasks/webhook_sender.py does:

- `httpx stream`: `AsyncClient.stream("POST", url, ...)`, the sender before session 7;
- `httpx send`: one `httpx.URL` parsed once, an `httpx.Request` built per delivery and
  `AsyncClient.send(request, stream=True)`, the sender after it;
- `httpcore`: httpx's own transport layer alone, `httpcore.AsyncConnectionPool.stream`.

Variants take turns, round after round, so that a machine shared with other work loads each
alike; each figure is the median of the rounds. CPU is `time.process_time()` (this process,
all threads) and the receiver's from /proc, per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpcore
import httpx

from bench.processes import free_port
from contactsync.webhook_signing import Signer

BODY_LIMIT = 4096
BODY = (b'{"id":"evt_01","type":"contact.updated","contact":{"custom_fields":{"plan":"'
        + b"x" * 480 + b'"}}}')
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

Post = Callable[[bytes, dict[str, str]], Awaitable[int]]


def _headers(signer: Signer, n: int) -> dict[str, str]:
    return signer.headers(f"evt_{n:08d}", BODY, datetime.now(UTC))


async def _read_at_most(chunks: AsyncIterator[bytes]) -> None:
    """Read an answer's body up to BODY_LIMIT, as the sender does."""
    read = 0
    async for chunk in chunks:
        read += len(chunk)
        if read >= BODY_LIMIT:
            return


def httpx_stream(url: str, connections: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(timeout=10, follow_redirects=False, limits=httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections))

    async def post(body: bytes, headers: dict[str, str]) -> int:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            await _read_at_most(response.aiter_raw())
            return response.status_code
    return post, client.aclose


def httpx_send(url: str, connections: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(timeout=10, follow_redirects=False, limits=httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections))
    parsed = httpx.URL(url)

    async def post(body: bytes, headers: dict[str, str]) -> int:
        request = httpx.Request("POST", parsed, content=body, headers=headers)
        response = await client.send(request, stream=True)
        try:
            await _read_at_most(response.aiter_raw())
            return response.status_code
        finally:
            await response.aclose()
    return post, client.aclose


def httpcore_pool(url: str, connections: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    pool = httpcore.AsyncConnectionPool(max_connections=connections,
                                        max_keepalive_connections=connections)
    extensions = {"timeout": {"connect": 10.0, "read": 10.0, "write": 10.0, "pool": 10.0}}

    async def post(body: bytes, headers: dict[str, str]) -> int:
        async with pool.stream("POST", url, content=body, headers=list(headers.items()),
                               extensions=extensions) as response:
            await _read_at_most(response.aiter_stream())
            return response.status
    return post, pool.aclose


VARIANTS = {"httpx stream": httpx_stream, "httpx send": httpx_send, "httpcore": httpcore_pool}


async def _run(make: Callable[[str, int], tuple[Post, Callable[[], Awaitable[None]]]],
               url: str, connections: int, requests: int) -> tuple[float, float]:
    post, close = make(url, connections)
    signer = Signer([SECRET])
    slots = asyncio.Semaphore(connections)

    async def one(n: int) -> None:
        async with slots:
            status = await post(BODY, _headers(signer, n))
            assert status == 204, status

    await asyncio.gather(*(one(n) for n in range(200)))  # connections open, code warm
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(requests)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await close()
    return cpu, wall


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_clients", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,2,4,8")
    args = parser.parse_args(argv)
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-m", "bench.receiver_app", "--port",
                                 str(port)])
    url = f"http://127.0.0.1:{port}/hook"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        print(f"{args.requests} POSTs of {len(BODY)} bytes per variant, {args.rounds} rounds, "
              f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for _ in range(args.rounds):
            for connections in (int(c) for c in args.connections.split(",")):
                for name, make in VARIANTS.items():
                    before = _cpu_seconds(receiver.pid)
                    cpu, wall = asyncio.run(_run(make, url, connections, args.requests))
                    receiver_cpu = _cpu_seconds(receiver.pid) - before
                    results.setdefault((name, connections), []).append(
                        (cpu, wall, receiver_cpu))
        print(f"load average {os.getloadavg()[0]:.1f} at the end\n")
        print("| client | connections | CPU per request, ours | requests/s | receiver's CPU "
              "per request |\n|---|---|---|---|---|")
        for (name, connections), runs in results.items():
            per = statistics.median(c for c, _, _ in runs) / args.requests * 1000
            rate = args.requests / statistics.median(w for _, w, _ in runs)
            rcv = statistics.median(r for _, _, r in runs) / args.requests * 1000
            print(f"| {name} | {connections} | {per:.3f} ms | {rate:,.0f} | {rcv:.3f} ms |")
    finally:
        receiver.terminate()
        receiver.wait(10)
    print(f"\ncommand: python -m bench.http_clients {' '.join(argv or sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
