"""Sample directories for prometheus-client's multiprocess mode, one per running service.

A gateway with several processes, or a worker with a prefork pool, has each process write its
samples to files in one directory, which its metrics endpoint sums. The directory is named after
the process that made it, so one left behind by a killed process is removed by the next start.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

_NAME = re.compile(r"^contactsync-(gateway|worker)-metrics-(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_stale(root: Path | None = None) -> None:
    """Remove the sample directories of processes that are gone."""
    root = root or Path(tempfile.gettempdir())
    for path in root.glob("contactsync-*-metrics-*"):
        match = _NAME.match(path.name)
        if match and not _alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)


def make_metrics_dir(kind: str) -> Path:
    """Make this process's sample directory and point prometheus-client at it.

    Metrics made from then on in this process, and in processes it forks or spawns, write there.
    """
    sweep_stale()
    directory = Path(tempfile.mkdtemp(prefix=f"contactsync-{kind}-metrics-{os.getpid()}-"))
    # prometheus-client's own contract: with this set, a new value writes to a file there.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory
