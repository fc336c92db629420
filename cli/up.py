"""`contactsync up`: everything on one machine with nothing configured; Ctrl-C stops it all."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
from kombu.exceptions import KombuError
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import select

from cli.errors import CliError
from contactsync import names, supervise
from contactsync.contacts import create_contact
from contactsync.db import Database
from contactsync.errors import Conflict
from contactsync.keys import PERMISSIONS, create_key
from contactsync.migrate import upgrade
from contactsync.models import Account, ApiKey, Contact
from contactsync.settings import Settings, get_settings
from contactsync.timeutil import utcnow
from worker.app import create_app as create_worker_app

STATE_DIR = Path(".contactsync")
DEMO_ACCOUNT = "demo"
SEED_CONTACT_ID = "cnt_abc123def456"
# The seed document's contact before its example update (position and tags then change).
SEED_CONTACT = {
    "name": "John Doe",
    "email": "john@example.com",
    "phone": "+5511999999999",
    "company": "Acme Inc",
    "position": "Engineering Manager",
    "source": "linkedin",
    "linkedin_url": "https://linkedin.com/in/johndoe",
    "tags": ["lead"],
    "custom_fields": {},
}
SEED_CREATED_AT = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def _redis_answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _private_redis(settings: Settings) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise CliError(
            f"Redis does not answer at {settings.redis_url} and redis-server is not on PATH: "
            "install Redis or set REDIS_URL"
        )
    data_dir = (STATE_DIR / "redis").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
         "--appendonly", "yes", "--save", "", "--logfile", str(data_dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise CliError(f"the private redis-server did not start (see {data_dir / 'redis.log'})")
        time.sleep(0.1)
    return process, url


def prepare_demo(db: Database) -> str:
    """Create the demo account's seed contact if missing; return a fresh demo key.

    Keys are stored only as hashes, so each run revokes the previous demo keys and shows a
    new one rather than keeping a secret on disk.
    """
    with db.unit_of_work() as session:
        account = session.scalar(select(Account).where(Account.name == DEMO_ACCOUNT))
        if account is not None:
            for key in session.scalars(
                select(ApiKey).where(ApiKey.account_id == account.id, ApiKey.revoked_at.is_(None))
            ):
                key.revoked_at = utcnow()
        row, secret = create_key(session, DEMO_ACCOUNT, list(PERMISSIONS))
        if session.get(Contact, SEED_CONTACT_ID) is None:
            try:
                contact = create_contact(session, row.account_id, SEED_CONTACT, SEED_CONTACT_ID)
            except Conflict:  # the seed was deleted, and another contact took its email since
                return secret
            contact.created_at = contact.updated_at = SEED_CREATED_AT
    return secret


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli", *command], env=env)


def _wait_until(
    ready: Callable[[], bool], what: str, processes: list[subprocess.Popen[bytes]],
    timeout: float = 60,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise CliError("a component exited during start-up; see its output above")
        if ready():
            return
        time.sleep(0.2)
    raise CliError(f"{what} did not become ready within {timeout:.0f} s")


def _webhooks_env(env: dict[str, str]) -> dict[str, str]:
    """The delivery worker's environment: its metrics on the port after the update worker's
    (one port serves one worker)."""
    port = get_settings().worker_metrics_port
    return {**env, "CONTACTSYNC_WORKER_METRICS_PORT": str(port + 1 if 0 < port < 65535 else 0)}


def _gateway_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_ready(settings: Settings, redis_url: str) -> Callable[[], bool]:
    """A probe of whether a worker answers Celery's ping: until then, the banner's example
    PUT would wait for a worker still starting, and answer 202 instead of the applied update."""
    control = create_worker_app(settings.model_copy(update={"redis_url": redis_url})).control

    def ready() -> bool:
        try:
            return bool(control.ping(timeout=0.5))
        except (KombuError, RedisError):  # Redis not answering a moment: ask again
            return False

    return ready


def _banner(gateway_url: str, flower_url: str, key: str, settings: Settings) -> str:
    # Printed for the person at this terminal, as the API key is: it is their local setup.
    user, password = settings.flower_basic_auth.split(":", 1)
    metrics = f"{gateway_url}/metrics"
    if settings.worker_metrics_port:
        worker = f"http://{settings.worker_metrics_address}:{settings.worker_metrics_port}"
        metrics += f" and {worker}/metrics"
    return f"""
contactsync is up.
  gateway   {gateway_url}   (OpenAPI: {gateway_url}/docs)
  flower    {flower_url}   (user: {user}  password: {password})
  metrics   {metrics}
  API key   {key}

Try the seed's example:

curl --request PUT \\
  --url "{gateway_url}/external/v1/contacts/{SEED_CONTACT_ID}" \\
  --header "Content-Type: application/json" \\
  --header "X-API-Key: {key}" \\
  --data '{{
    "position": "VP of Engineering",
    "tags": ["hot-lead", "enterprise"]
  }}'

Watch the change events:  contactsync events tail
Ctrl-C stops everything.
"""


def run(gateway_port: int, flower_port: int) -> int:
    """Start every part, print how to use it, and wait for Ctrl-C."""
    settings = get_settings()
    redis_process = None
    redis_url = settings.redis_url
    if not _redis_answers(redis_url):
        redis_process, redis_url = _private_redis(settings)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upgrade(settings.database_url)
        db = Database(settings)
        try:
            key = prepare_demo(db)
        finally:
            db.dispose()
        env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": settings.database_url}
        processes.append(_spawn(["gateway", "--port", str(gateway_port)], env))
        processes.append(_spawn(["worker"], env))
        processes.append(_spawn(["worker", "--queues", names.WEBHOOKS_QUEUE], _webhooks_env(env)))
        processes.append(_spawn(["flower", "--port", str(flower_port)], env))
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        _wait_until(partial(_gateway_ready, gateway_url), "the gateway", processes)
        _wait_until(_worker_ready(settings, redis_url), "the worker", processes)
        print(_banner(gateway_url, f"http://127.0.0.1:{flower_port}", key, settings),
              flush=True)
        _wait_for_exit(processes)
        return 0
    finally:
        _stop_all(processes)
        if redis_process is not None:
            _stop_all([redis_process])


def _wait_for_exit(processes: list[subprocess.Popen[bytes]]) -> None:
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop:
        if any(p.poll() is not None for p in processes):
            raise CliError("a component stopped unexpectedly; stopping the others")
        time.sleep(0.2)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    supervise.stop(processes, grace=30)
