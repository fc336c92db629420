"""The capacity tool's quick form runs end to end, and its hosts' shares add up to the total."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from bench import postgres
from tests.support import ROOT, require_service

pytestmark = pytest.mark.slow  # four phases of fresh gateways and workers: minutes when loaded


@pytest.mark.timeout(900)
def test_capacity_quick_form_prints_every_table_and_the_hosts_add_up() -> None:
    require_service("wrk", shutil.which("wrk") is not None)
    require_service("redis-server", shutil.which("redis-server") is not None)
    require_service("initdb", postgres.available())
    result = subprocess.run(
        [sys.executable, "-m", "bench.capacity", "--quick", "--reference",
         "single=1000,bulk=2000"], cwd=ROOT, capture_output=True, text=True, timeout=840,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    for title in ("### Costs per update", "### Idle costs per second", "### Each host's share",
                  "### Redis commands per update", "### Capacity at 1x, 10x and 100x",
                  "### Capacity at 1x, 10x and 100x the reference rates",
                  "### Throughput, two hosts against one"):
        assert title in out, out
    for phase in ("2 hosts, bulk batches", "2 hosts, single PUTs"):
        shares = dict(re.findall(rf"^\| {phase} \| (host\d|database: update records|"
                                 rf"workers, sum) \| ([\d,]+)", out, re.M))
        assert set(shares) == {"host1", "host2", "workers, sum", "database: update records"}
        # Every update the database recorded was finished by one of the two worker hosts.
        assert shares["workers, sum"] == shares["database: update records"], out
