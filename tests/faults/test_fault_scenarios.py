"""Every fault scenario, quick form: a few hundred updates each, checked against the oracle.

`python -m bench.faults --updates 20000` runs the same scenarios at length; docs/reliability.md
records such a run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.faults.load import CLIENT_TIMEOUT
from bench.faults.recovery import RECOVERY_SECONDS
from bench.faults.scenarios import QUICK, SCENARIOS, Scenario, table

pytestmark = pytest.mark.slow  # fault scenarios under load

# Restarting PostgreSQL breaks every other connection to it: in CI the server is ours alone;
# on a machine shared with other people's tests, ask for it explicitly.
RESTART_POSTGRES = bool(os.environ.get("CI") or os.environ.get("CONTACTSYNC_FAULTS_PG_RESTART"))


@pytest.mark.timeout(300)  # about 20 s each; the drain may wait up to 90 s on a busy machine
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_accepted_update_is_applied_once(
    scenario: Scenario, faults_database_url: str, tmp_path: Path
) -> None:
    if scenario.disturbs_others:
        if not RESTART_POSTGRES:
            pytest.skip("restarts the machine's PostgreSQL: set CONTACTSYNC_FAULTS_PG_RESTART=1")
        assert shutil.which("pg_ctlcluster"), "CI must be able to restart PostgreSQL"
    report = scenario.run(faults_database_url, tmp_path, QUICK)
    print("\n" + table([report]) + "\n" + "; ".join(report.notes))
    assert report.violations() == [], table([report])
    assert report.accepted > QUICK.updates // 4
    assert report.applied == report.accepted and report.lost == 0
    assert report.accepted_after_fault > 0  # the system came back by itself
    if scenario.name == "Redis SIGKILL":
        assert report.unavailable > 0  # answered 503, with Retry-After, while Redis was down
        assert report.slowest_503 < CLIENT_TIMEOUT
    if scenario.name == "worker SIGKILL":  # DESIGN §3, with the default visibility timeout
        assert report.counters["held"] > 0
        assert report.recovery_seconds is not None
        assert report.recovery_seconds <= RECOVERY_SECONDS
    if scenario.name.startswith("duplicates"):
        assert report.counters["duplicated"] > 0 and report.counters["shuffled"] > 0
