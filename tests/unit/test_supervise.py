"""The one supervisor (contactsync/supervise.py) on real child processes."""

from __future__ import annotations

import subprocess
import sys
import time

from contactsync.supervise import Restarting, stop
from tests.support import wait_until


def _python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace() -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
         "; print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE,
    )
    polite = _python("import time; time.sleep(60)")
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    started = time.monotonic()
    stop([stubborn, polite], grace=1)
    stubborn.stdout.close()
    assert (polite.returncode, stubborn.returncode) == (-15, -9)
    assert time.monotonic() - started < 10


def test_a_child_that_exits_is_started_again_until_halted() -> None:
    starts: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        starts.append(_python("raise SystemExit(7)"))
        return starts[-1]

    child = Restarting(start, "a short-lived child", pause=0.05)
    wait_until(lambda: len(starts) >= 3, timeout=30)
    child.stop(grace=5)
    count = len(starts)
    time.sleep(0.3)  # several pauses: a start after the halt would show by now
    assert len(starts) == count
    assert child.failed is None


def test_a_fatal_exit_status_is_not_started_again() -> None:
    starts: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        starts.append(_python("raise SystemExit(3)"))
        return starts[-1]

    child = Restarting(start, "a child that cannot start", pause=0.05, fatal={3})
    wait_until(lambda: child.failed == 3, timeout=30)
    assert len(starts) == 1
