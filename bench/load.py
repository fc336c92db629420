"""Load generators: wrk for peak throughput, an open-loop client for latency at a fixed rate."""

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WRK_SCRIPT = """
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{key}"
{extra_headers}
counter = {first}
request = function()
  counter = counter + 1
  local id = string.format("cnt_bench%07d", counter % {contacts})
  return wrk.format(nil, "/external/v1/contacts/" .. id, nil,
    '{{"position": "P' .. counter .. '", "tags": ["t' .. (counter % 7) .. '"], '
    .. '"custom_fields": {{"n": ' .. counter .. '}}}}')
end
"""


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    rps: float
    p50_ms: float
    p99_ms: float


def _ms(text: str) -> float:
    value = float(re.sub(r"[a-z]+$", "", text))
    unit = re.sub(r"^[0-9.]+", "", text)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}.get(unit, 1.0)


def wrk(url: str, key: str, contacts: int, seconds: float, connections: int = 64,
        respond_async: bool = True, first: int = 0) -> WrkResult:
    """Drive PUTs at the highest rate the server takes; return wrk's figures. `first`: where
    the request counter starts, which numbers the values sent (two loads with the same values
    would make the second's updates no-ops)."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench needs wrk (Debian package wrk)")
    extra = 'wrk.headers["Prefer"] = "respond-async"' if respond_async else ""
    script = WRK_SCRIPT.format(key=key, contacts=contacts, extra_headers=extra, first=first)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--latency",
             "-s", handle.name, url], capture_output=True, text=True, check=True,
        ).stdout
    finally:
        Path(handle.name).unlink()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests=requests,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        rps=float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
    )


@dataclass
class OpenLoopResult:
    sent: int
    ok: int
    statuses: dict[int, int]
    p50_ms: float
    p99_ms: float
    late_p99_ms: float  # how late the generator itself sent (its own delay, not the server's)


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] * 1000 if values else 0.0


async def _open_loop(host: str, port: int, rate: float, seconds: float,
                     request: Callable[[int], bytes], warmup: float) -> OpenLoopResult:
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    late: list[float] = []
    statuses: dict[int, int] = {}

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       index: int) -> bytes:
        writer.write(request(index))
        return await reader.readuntil(b"\r\n\r\n")

    async def one(index: int, due: float, timed: bool) -> None:
        # The schedule never waits for answers (a connection of its own when none is idle), so
        # a slow answer delays no later request: no coordinated omission. Latency counts from
        # when the generator got to send, so its own lateness (a busy machine, its event loop)
        # is not charged to the server; how late it was is reported beside.
        began = loop.time()
        if idle:
            reader, writer = idle.pop()
            try:
                head = await exchange(reader, writer, index)
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed this kept-alive connection while it sat idle.
                reader, writer = await asyncio.open_connection(host, port)
                head = await exchange(reader, writer, index)
        else:
            reader, writer = await asyncio.open_connection(host, port)
            head = await exchange(reader, writer, index)
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        idle.append((reader, writer))
        if timed:
            latencies.append(loop.time() - began)
            late.append(began - due)
            statuses[status] = statuses.get(status, 0) + 1

    start = loop.time() + 0.05
    tasks = []
    skipped = int(rate * warmup)  # the warm-up's requests: sent on schedule, not counted
    total = int(rate * seconds)
    # The generator's own collector pauses would show as the server's latency.
    gc.collect()
    gc.disable()
    try:
        for index in range(skipped + total):
            due = start + index / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(index, due, index >= skipped)))
        await asyncio.gather(*tasks)
    finally:
        gc.enable()
    for _, writer in idle:
        writer.close()
    latencies.sort()
    late.sort()
    return OpenLoopResult(
        sent=total, ok=sum(v for k, v in statuses.items() if 200 <= k < 300), statuses=statuses,
        p50_ms=_quantile(latencies, 0.5), p99_ms=_quantile(latencies, 0.99),
        late_p99_ms=_quantile(late, 0.99),
    )


def open_loop(
    port: int, rate: float, seconds: float, request: Callable[[int], bytes], warmup: float = 2
) -> OpenLoopResult:
    """Send `rate` requests a second for `warmup` + `seconds`, whatever the answers' pace;
    return the figures of the last `seconds`."""
    return asyncio.run(_open_loop("127.0.0.1", port, rate, seconds, request, warmup))


def put_request(key: str, contacts: int) -> Callable[[int], bytes]:
    """Return a builder of default-mode PUT requests spread over `contacts` contacts."""

    def build(index: int) -> bytes:
        body = b'{"position": "P%d", "custom_fields": {"n": %d}}' % (index, index)
        return (
            b"PUT /external/v1/contacts/cnt_bench%07d HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/json\r\nX-API-Key: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (index % contacts, key.encode(), len(body), body)
        )

    return build
