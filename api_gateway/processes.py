"""Several gateway processes on one port, each listening on a socket of its own.

uvicorn's `--workers` has its processes share one listening socket, and whichever is awake
first accepts: under a few dozen kept-alive connections (an integration's pool, a load
generator) one process often held nearly all of them while the other idled. Here each process
binds the port itself with SO_REUSEPORT, and the kernel spreads new connections over them.
The parent only watches: it starts a process again if one dies, and on SIGTERM or SIGINT
passes SIGTERM on (each drains its requests in flight, as a single uvicorn does) and waits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

from contactsync.supervise import Restarting, exit_with_parent, stop

log = logging.getLogger("contactsync.gateway")

RESTART_PAUSE_SECONDS = 1.0  # before a process that died is started again: no busy loop
STARTUP_FAILURE = 3  # uvicorn's exit status when the application cannot start


def reuse_port_available() -> bool:
    """Linux spreads connections over a port's SO_REUSEPORT sockets (macOS has the flag, but
    hands every connection to one socket): elsewhere, uvicorn's shared socket serves."""
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def _socket(host: str, port: int, *, shared: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop, as the launcher would ask


def _serve_one(config: dict[str, Any], parent: int) -> None:
    """One gateway process: its own socket in the port's group, then uvicorn as usual."""
    # A gateway process left behind would go on sharing the port with whatever starts next.
    exit_with_parent(parent, _terminate_self)
    server = uvicorn.Server(uvicorn.Config(**config))
    try:
        server.config.load()  # the application; uvicorn logs why it cannot, then exits
        sock = _socket(config["host"], config["port"])
    except (OSError, SystemExit) as exc:
        log.error("a gateway process could not start (%s)", exc)
        sys.exit(STARTUP_FAILURE)
    sock.listen(2048)
    server.run(sockets=[sock])
    if not server.started:  # as `uvicorn.run` does: the application failed to start
        sys.exit(STARTUP_FAILURE)


def serve(config: dict[str, Any], workers: int, stop_timeout: float) -> int:
    """Run `workers` processes of the app `config` describes (uvicorn.Config's arguments).

    Raises OSError at once when the address cannot be bound (taken by another program).
    """
    # Any socket on the port, even another gateway's SO_REUSEPORT one, fails a plain bind: a
    # second gateway must not silently join the first one's group and take half its traffic.
    _socket(config["host"], config["port"], shared=False).close()
    # Bound, never listening: the port stays ours, yet takes no connection of the group's.
    reservation = _socket(config["host"], config["port"])
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, as uvicorn's workers

    def start() -> BaseProcess:
        process = spawn.Process(
            target=_serve_one, args=(config, os.getpid()), name="contactsync-gateway"
        )
        process.start()
        return process

    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: stopping.append(received))
    # Starting a process that could not start would fail again (the application does not
    # load, the port was taken): stop, as a single uvicorn process would.
    slots = [Restarting(start, "a gateway process", RESTART_PAUSE_SECONDS,
                        fatal={STARTUP_FAILURE}) for _ in range(workers)]
    status = 0
    try:
        while not stopping:
            if any(slot.failed is not None for slot in slots):
                log.error("a gateway process could not start; stopping")
                status = STARTUP_FAILURE
                break
            time.sleep(0.2)
    finally:
        # SIGTERM: each finishes the requests in flight, then exits.
        stop([slot.halt() for slot in slots], stop_timeout)
        reservation.close()
    return status
