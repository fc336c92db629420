"""Child processes, written once: stop them, keep one running, exit when the parent is gone.

Used by the gateway launcher, the worker's relay and metrics server, and `contactsync up`.
Our own module rather than a library: supervisor and circus are whole daemons with their own
configuration, and what is needed here is about a hundred lines over subprocess and
multiprocessing.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable
from multiprocessing import connection
from multiprocessing.process import BaseProcess

log = logging.getLogger("contactsync.supervise")

Child = subprocess.Popen[bytes] | BaseProcess


def _wait(process: Child, timeout: float | None) -> bool:
    """Wait up to `timeout` seconds (None: for ever); return whether the process has exited."""
    if isinstance(process, BaseProcess):
        process.join(timeout)
        return not process.is_alive()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _until_exit(process: Child) -> None:
    """Wait until the process exits; a multiprocessing one is left for its owner to reap (two
    threads reaping one child race: one of them sees it still running)."""
    if isinstance(process, BaseProcess):
        connection.wait([process.sentinel])
    else:
        process.wait()  # subprocess's wait is safe from several threads


def exit_code(process: Child) -> int | None:
    """Return the exit status of a process that has exited, else None."""
    return process.exitcode if isinstance(process, BaseProcess) else process.poll()


def stop(processes: Iterable[Child], grace: float, kill_wait: float = 5) -> None:
    """SIGTERM every process (a graceful stop), wait up to `grace` seconds for them all, then
    SIGKILL those still running."""
    processes = list(processes)
    for process in processes:
        if exit_code(process) is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        if not _wait(process, max(0.0, deadline - time.monotonic())):
            process.kill()
            _wait(process, kill_wait)


def exit_with_parent(parent_pid: int, then: Callable[[], None], every: float = 1.0) -> None:
    """Call `then` once the process `parent_pid` is gone (this one re-parented), from a daemon
    thread polling every `every` seconds: a child left behind by a parent killed with SIGKILL
    would go on holding its port, or its work, with nobody to stop it."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        then()

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class Restarting:
    """Keep one child process running: started again `pause` seconds after it exits, until
    `halt` or `stop`. An exit status in `fatal` is not restarted (it would fail again): it is
    left in `failed` for the owner to act on. The thread that watches holds no resources."""

    def __init__(
        self, start: Callable[[], Child], name: str, pause: float = 1.0,
        fatal: Collection[int] = (),
    ) -> None:
        self._start = start
        self._name = name
        self._pause = pause
        self._fatal = fatal
        self._halted = threading.Event()
        self._lock = threading.Lock()  # halting and starting again never cross
        self.failed: int | None = None
        self.process = start()
        threading.Thread(target=self._watch, name=f"{name}-watch", daemon=True).start()

    def _watch(self) -> None:
        while True:
            _until_exit(self.process)
            if self._halted.is_set():
                return  # the owner stops and reaps it
            _wait(self.process, None)  # reaped: its exit status is known
            code = exit_code(self.process)
            if code in self._fatal:
                self.failed = code
                return
            if self._halted.wait(self._pause):
                return
            with self._lock:
                if self._halted.is_set():
                    return
                log.warning("%s exited (code %s); starting it again", self._name, code)
                self.process = self._start()

    def halt(self) -> Child:
        """Start it no more; return the process now running (or last run)."""
        with self._lock:
            self._halted.set()
            return self.process

    def stop(self, grace: float) -> None:
        """Start it no more, and stop it (see `stop`)."""
        stop([self.halt()], grace)
