"""Start the outbox relay (`tasks.relay`, by module name) beside a worker's pool."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

log = logging.getLogger("contactsync.relay")

RESTART_PAUSE_SECONDS = 1.0  # before a relay that died is started again


class RelayProcess:
    """Run the relay in a process of its own beside a worker's pool, and keep it running.

    Not a thread of the worker's main process: the pool forks its children from that process,
    and a child forked while a thread there held an SQLite connection inherits SQLite's
    in-process lock state, then waits out its busy timeout on every write (SQLite's rule:
    never carry a connection across fork). A fresh interpreter inherits none of it. A relay
    that dies (killed, out of memory) is started again: without it no event is published and
    no lost task message is queued again, while the worker itself looks healthy. The thread
    that watches it holds no connection.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # stopping and starting again never cross
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        self._process = self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="relay-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The same interpreter and environment, hence the same settings as the worker.
        return subprocess.Popen(
            [sys.executable, "-m", "tasks.relay", str(os.getpid())], stdin=subprocess.DEVNULL
        )

    def _watch(self) -> None:
        while not self._stopping.is_set():
            assert self._process is not None
            code = self._process.wait()
            if self._stopping.wait(RESTART_PAUSE_SECONDS):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                log.warning("the outbox relay exited (code %s); starting it again", code)
                self._process = self._spawn()

    def stop(self, timeout: float = 10) -> None:
        """Ask the relay to drain and exit; kill it if it has not within `timeout`."""
        with self._lock:
            self._stopping.set()
        if self._process is None:
            return
        self._process.terminate()  # SIGTERM: drain, then exit
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
