"""The benchmark's quick form runs end to end (a smoke test: no figure is asserted)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT, require_service

pytestmark = pytest.mark.slow  # the benchmark


# About 70 s on a quiet machine, over 120 s (the suite's default) while the rest of CI loads it.
@pytest.mark.timeout(660)
def test_bench_quick_form_prints_every_section() -> None:
    require_service("wrk", shutil.which("wrk") is not None)
    require_service("redis-server", shutil.which("redis-server") is not None)
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for measure in ("| req/s |", "| drain, 1 update(s)/message |", "| bulk, applied end to end |",
                    "| single updates accepted → applied |", "| default-mode PUT at 300 req/s |",
                    "| single updates, straightforward design |", "| target (issue 13) |",
                    "| worker RSS over", "| sync import, batch upsert vs update |",
                    "| worker RSS over the upsert import |",
                    "| webhook deliveries to a bare receiver |"):
        assert measure in result.stdout, result.stdout
