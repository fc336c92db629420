"""(g) Webhook deliveries to a local receiver while updates flow, and the update path's
end-to-end rate with and without webhooks, in the same run."""

from __future__ import annotations

import sys
import time

import httpx
from pydantic import SecretStr
from sqlalchemy import func, select

from bench import load, services
from bench.processes import free_port, worker_args
from bench.runs import Config, _applied, _wait_applied
from contactsync.db import Database
from contactsync.models import ApiKey, OutboxEvent, WebhookDelivery, WebhookEndpoint
from contactsync.timeutil import utcnow
from contactsync.webhook_secrets import new_secret, seal

# The bench's own key that seals the endpoints' secrets (a throwaway database).
SECRET_KEY = "bench-webhook-secret-key-0123456789abcdef"


def _add_endpoints(cfg: Config, url: str, count: int) -> None:
    settings = cfg.settings.model_copy(update={"webhook_secret_key": SecretStr(SECRET_KEY)})
    db = Database(settings)
    try:
        with db.unit_of_work() as session:
            account_id = session.scalar(select(ApiKey.account_id).limit(1))
            now = utcnow()
            for i in range(count):
                session.add(WebhookEndpoint(
                    id=f"whk_bench{i:04d}", account_id=account_id, url=url,
                    events=["contact.updated", "contact.created", "contact.deleted"],
                    description="bench", enabled=True,
                    secret_ciphertext=seal(new_secret(), settings), created_at=now, updated_at=now,
                ))
    finally:
        db.dispose()


def _succeeded(cfg: Config) -> int:
    db = Database(cfg.settings)
    try:
        with db.reading() as session:
            return session.scalar(select(func.count()).select_from(WebhookDelivery).where(
                WebhookDelivery.status == "succeeded")) or 0
    finally:
        db.dispose()


def _left(db: Database) -> int:
    """Return 0 once nothing is left to deliver: no pending delivery, no unpublished event.

    The pending ones only (an index's range), and the outbox only once none is pending: this
    poll's counts of the whole deliveries table and of the outbox, ten times a second, were a
    quarter of the samples of active PostgreSQL queries during a run (pg_stat_activity).
    """
    with db.reading() as session:
        pending = session.scalar(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.status == "pending")) or 0
        if pending:
            return pending
        return session.scalar(select(func.count()).select_from(OutboxEvent)) or 0


def _update_rate(cfg: Config, url: str) -> tuple[float, int]:
    """Drive async PUTs for cfg.seconds; return the accepted → applied rate and how many."""
    before = _applied(cfg.settings)
    started = time.monotonic()
    result = load.wrk(url, cfg.key, len(cfg.contacts), cfg.seconds)
    accepted = result.requests - result.non_2xx
    finished = _wait_applied(cfg.settings, before + accepted)
    return accepted / (finished - started), accepted


def deliveries_beside_updates(
    cfg: Config, concurrency: int, endpoints: int = 2, webhook_concurrency: int = 2,
    nice: int = 0,
) -> None:
    """(g) Deliveries/s to a bare receiver (`endpoints` endpoints of the bench's account, each
    event to each) while updates flow, beside the same updates without webhooks. `nice`: the
    delivery worker runs at that lower CPU priority (an experiment; 0 is how it is run)."""
    print(f"(g) webhook deliveries beside updates ({endpoints} endpoints)", flush=True)
    env = cfg.env()
    webhook_env = {**env, "CONTACTSYNC_WEBHOOK_SECRET_KEY": SECRET_KEY,
                   "CONTACTSYNC_WEBHOOKS_ALLOW_INSECURE": "true"}
    receiver_port, port = free_port(), free_port()
    receiver = services.start("receiver", [sys.executable, "-m", "bench.receiver_app", "--port",
                                           str(receiver_port)], env, cfg.log_dir)
    receiver_url = f"http://127.0.0.1:{receiver_port}/hook"
    services.wait_for(lambda: httpx.post(receiver_url).status_code == 204, "receiver")
    gateway = services.start_gateway(env, port, cfg.processes, cfg.log_dir)
    worker = services.start_worker(webhook_env, concurrency, cfg.log_dir)
    url = f"http://127.0.0.1:{port}"
    deliverer: services.Service | None = None
    try:
        time.sleep(2)
        without, _ = _update_rate(cfg, url)
        _add_endpoints(cfg, receiver_url, endpoints)
        args = worker_args(f"bench-webhooks-{time.time_ns()}", webhook_concurrency,
                           queues="webhooks", loglevel="WARNING")
        deliverer = services.start(
            "webhooks", ["nice", "-n", str(nice), *args] if nice else args, webhook_env,
            cfg.log_dir,
        )
        time.sleep(3)  # the delivery worker starts, the relays see the endpoints
        delivered_before = _succeeded(cfg)
        started = time.monotonic()
        with_hooks, accepted = _update_rate(cfg, url)
        # Until nothing is left to deliver (an update that changed nothing made no event).
        deadline = time.monotonic() + 600
        db = Database(cfg.settings)
        try:
            while _left(db) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            db.dispose()
        took = time.monotonic() - started
        delivered = _succeeded(cfg) - delivered_before
        cfg.row("updates accepted → applied, with webhooks (baseline: without)",
                f"{with_hooks:.0f}/s", f"{without:.0f}/s",
                f"ratio {with_hooks / without:.2f} (target >= 0.85)")
        cfg.row("webhook deliveries to a bare receiver", f"{delivered / took:.0f}/s",
                "-", f"{delivered} delivered ({accepted} updates x {endpoints} endpoints) in "
                f"{took:.1f}s (target >= 1,000/s)")
    finally:
        if deliverer is not None:
            deliverer.stop()
        worker.stop()
        gateway.stop()
        receiver.stop()
