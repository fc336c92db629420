"""What PostgreSQL's backends are doing, sampled from `pg_stat_activity` every 20 ms in a
thread while a bench runs: the tools that ask where a figure's time went read it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psycopg

INTERVAL_SECONDS = 0.02

_QUERY = r"""
    SELECT backend_type, datname = %s, state, wait_event_type, wait_event,
           btrim(regexp_replace(left(query, 120), '\s+', ' ', 'g'))
    FROM pg_stat_activity WHERE pid <> pg_backend_pid()
"""


@dataclass(frozen=True)
class Backend:
    kind: str  # backend_type: "client backend", "checkpointer", "autovacuum worker", ...
    ours: bool  # connected to the database sampled for
    state: str | None
    wait_type: str | None
    wait: str | None
    query: str  # its first 120 characters, whitespace folded


class ActivitySampler:
    """Samples every backend of the server (`url`), marking those of `database`; `samples`
    holds each sample's wall-clock time and backends, until `stop()`."""

    def __init__(self, url: str, database: str) -> None:
        self.samples: list[tuple[float, list[Backend]]] = []
        self._url = url.replace("postgresql+psycopg://", "postgresql://")
        self._database = database
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pg-sampler")
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.wait(INTERVAL_SECONDS):
                backends = [Backend(kind, bool(ours), state, wait_type, wait, query or "")
                            for kind, ours, state, wait_type, wait, query
                            in conn.execute(_QUERY, (self._database,))]
                self.samples.append((time.time(), backends))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
