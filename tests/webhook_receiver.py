"""A webhook receiver for the tests, run as its own process: `python -m tests.webhook_receiver
PORT RECORD`. It appends each request to RECORD (one JSON line: path, headers, body as text,
time received) and answers 204; a path `/status/<code>...` answers that code, a path
`/sleep/<seconds>...` waits that long first, and a path `/fail/<n>/<how>...` fails its first n
requests (`how`: a status code, or `sleep` for 5 s), and a path `/hold/...` answers only once
a file RECORD.release exists (a batch surely in flight). A bare asyncio server (h11 through
uvicorn), no framework: what it records is exactly what came over the wire."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def make_app(record: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    seen: dict[str, int] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        status = 204
        parts = path.strip("/").split("/")
        if path != "/health":
            line = json.dumps({
                "path": path, "received": time.time(),
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                "body": body.decode(),
            })
            with open(record, "a") as handle:
                handle.write(line + "\n")
            if parts[0] == "sleep":
                await asyncio.sleep(float(parts[1]))
            while parts[0] == "hold" and not os.path.exists(record + ".release"):
                await asyncio.sleep(0.02)
            if parts[0] == "status":
                status = int(parts[1])
            seen[path] = seen.get(path, 0) + 1
            if parts[0] == "fail" and seen[path] <= int(parts[1]):
                if parts[2] == "sleep":
                    await asyncio.sleep(5)
                else:
                    status = int(parts[2])
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning", access_log=False)
