"""Start the outbox relay (`tasks.relay`, by module name) beside a worker's pool.

A process of its own, not a thread of the worker's main process: the pool forks its children
from that process, and a child forked while a thread there held an SQLite connection inherits
SQLite's in-process lock state, then waits out its busy timeout on every write (SQLite's rule:
never carry a connection across fork). A fresh interpreter inherits none of it. A relay that
dies (killed, out of memory) is started again: without it no event is published and no lost
task message is queued again, while the worker itself looks healthy.
"""

from __future__ import annotations

import os
import subprocess
import sys

from contactsync.supervise import Restarting

RESTART_PAUSE_SECONDS = 1.0  # before a relay that died is started again


def _spawn() -> subprocess.Popen[bytes]:
    # The same interpreter and environment, hence the same settings as the worker.
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.relay", str(os.getpid())], stdin=subprocess.DEVNULL
    )


def start_relay() -> Restarting:
    """Start the relay, and start it again whenever it exits; `stop(10)` drains and ends it."""
    return Restarting(_spawn, "the outbox relay", RESTART_PAUSE_SECONDS)
