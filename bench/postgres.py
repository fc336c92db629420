"""A private PostgreSQL instance on loopback, for measurements no one else's load may touch.

The machine's shared server counts every database's WAL in one LSN and runs other people's
backends beside ours; a cluster of our own makes its whole process tree, its WAL and its
statistics this run's alone. Settings are the server's defaults (fsync and synchronous commit
on), as in production.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.processes import free_port, wait_until

DATABASE = "capacity"


@dataclass
class Instance:
    """A running private cluster: its postmaster and the URLs of its one database."""

    postmaster: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        """The plain libpq URL of the run's database (for psycopg)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.url.replace("postgresql://", "postgresql+psycopg://")


def _bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        raise SystemExit("bench.capacity needs PostgreSQL's server binaries (pg_config, initdb)")
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def available() -> bool:
    """Whether this machine can start a private cluster (initdb present)."""
    try:
        return (_bindir() / "initdb").exists()
    except (SystemExit, subprocess.CalledProcessError):
        return False


@contextmanager
def private_postgres() -> Iterator[Instance]:
    """Create, start, and at the end stop and delete a cluster with one database."""
    bindir = _bindir()
    # PostgreSQL refuses to run as root: as root, run it as the `postgres` account.
    user = "postgres" if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        if user is not None:
            account = pwd.getpwnam(user)
            os.chown(tmp, account.pw_uid, account.pw_gid)
            os.chown(data, account.pw_uid, account.pw_gid)
        log = (Path(tmp) / "postgres.log").open("ab")
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8", "--locale", "C"],
            user=user, stdout=log, stderr=subprocess.STDOUT, check=True,
        )
        port = free_port()
        postmaster = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", tmp,
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"],
            user=user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        instance = Instance(postmaster, port)
        try:
            admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            wait_until(lambda: psycopg.connect(admin).close() is None, timeout=60)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
            yield instance
        finally:
            # SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for every client).
            postmaster.send_signal(signal.SIGINT)
            try:
                postmaster.wait(30)
            except subprocess.TimeoutExpired:
                postmaster.kill()
                postmaster.wait(5)
            log.close()
