"""Flower, as an operator sees it: basic auth, task events, safe task rows, its own metrics.

The browser test drives Debian's Chromium headless through Playwright (never a downloaded
browser). A missing Chromium skips on a laptop and fails in CI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from contactsync.db import Database
from contactsync.settings import Settings
from tests.conftest import make_contact, make_tenant
from tests.e2e.ops import Services, contactsync, own_services, samples, value, wait_http_ok
from tests.support import ROOT, free_port, require_service, wait_until

pytestmark = pytest.mark.slow  # Flower in a real browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]
USER, PASSWORD = "ops", "flower-test-pass"
TASK = "contactsync.apply_updates"
# Set to a path (docs/flower.png) to keep the screenshot the browser test takes.
SCREENSHOT_ENV = "CONTACTSYNC_FLOWER_SCREENSHOT"


@dataclass
class Flower:
    url: str
    auth: tuple[str, str]
    services: Services

    def api(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def flower(
    settings: Settings, backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flower]:
    """`contactsync flower` beside a gateway and a worker of its own (a private Redis)."""
    if backend != "sqlite":
        pytest.skip("Flower reads only the broker: one backend shows it all")
    log_dir = tmp_path_factory.mktemp("flower")
    with own_services(settings, log_dir, CONTACTSYNC_WORKER_METRICS_PORT="0") as services:
        port = free_port()
        env = {**services.env, "CONTACTSYNC_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
        process = contactsync(["flower", "--port", str(port)], env, log_dir / "flower.log")
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{url}/healthcheck", timeout=60)

            def sees_the_worker() -> bool:
                # Set from the worker's heartbeat events: Flower's event receiver is running.
                scraped = samples(httpx.get(f"{url}/metrics", timeout=5).text)
                return value(scraped, "flower_worker_online") >= 1

            wait_until(sees_the_worker, timeout=30, interval=0.5)
            yield Flower(url, (USER, PASSWORD), services)
        finally:
            process.stop()


@dataclass
class Applied:
    key: str
    contact_ids: list[str]
    secrets: list[str]  # the emails and phones sent and stored: none may show in Flower


def _apply_updates(flower: Flower, db: Database, count: int = 3) -> Applied:
    tenant = make_tenant(db, "flower")
    contact_ids, secrets = [], [tenant.key]
    with httpx.Client(
        base_url=flower.services.gateway_url, headers={"X-API-Key": tenant.key}, timeout=20
    ) as client:
        for i in range(count):
            email, phone = f"flower.person{i}@example.com", f"+1 555 01{i:02d} 7788"
            contact_id = make_contact(db, tenant.account_id, email=email, phone=phone)
            new_email, new_phone = f"changed.person{i}@example.org", f"+4420794600{i:02d}"
            response = client.put(f"/external/v1/contacts/{contact_id}", json={
                "email": new_email, "phone": new_phone, "position": f"Flower Role {i}",
            })
            assert response.status_code == 200, response.text
            contact_ids.append(contact_id)
            secrets += [email, phone, new_email, new_phone, "+442079460"]
    return Applied(tenant.key, contact_ids, secrets)


def _apply_tasks(flower: Flower, contact_ids: list[str]) -> list[dict[str, Any]] | None:
    tasks = flower.api(f"/api/tasks?taskname={TASK}").values()
    found = [t for t in tasks if any(c in (t.get("args") or "") for c in contact_ids)]
    done = [t for t in found if t.get("state") == "SUCCESS"]
    covered = {c for t in done for c in contact_ids if c in t["args"]}
    return done if covered == set(contact_ids) else None


def test_flower_shows_each_update_task_safely_and_counts_its_events(
    flower: Flower, db: Database
) -> None:
    assert httpx.get(f"{flower.url}/tasks", timeout=10).status_code == 401
    assert httpx.get(f"{flower.url}/tasks", auth=(USER, "wrong"), timeout=10).status_code == 401
    applied = _apply_updates(flower, db)
    tasks = wait_until(lambda: _apply_tasks(flower, applied.contact_ids), timeout=30)
    for task in tasks:
        # received -> started -> succeeded, each from its own task event
        assert task["received"] and task["started"] and task["succeeded"], task
        assert task["received"] <= task["started"] <= task["succeeded"], task
        assert task["name"] == TASK
        assert "upd_" in task["args"] and "email" in task["args"], task  # ids and field names
        assert task["kwargs"] == "{}", task
        shown = repr(task)
        assert not [s for s in applied.secrets if s in shown], task
    metrics = samples(httpx.get(f"{flower.url}/metrics", timeout=10).text)
    for event in ("task-received", "task-started", "task-succeeded"):
        assert value(metrics, "flower_events_total", task=TASK, type=event) >= len(tasks), event
    assert value(metrics, "flower_task_runtime_seconds_count", task=TASK) >= len(tasks)


def _chromium_ready() -> bool:
    return CHROMIUM.exists() and importlib.util.find_spec("playwright") is not None


def test_a_browser_logs_in_and_finds_the_update_rows(
    flower: Flower, db: Database, tmp_path: Path
) -> None:
    require_service("Chromium (apt-get install chromium) and playwright", _chromium_ready())
    from playwright.sync_api import sync_playwright

    applied = _apply_updates(flower, db)
    wait_until(lambda: _apply_tasks(flower, applied.contact_ids), timeout=30)
    shot = tmp_path / "flower.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1920, "height": 720},
            )
            page = context.new_page()
            response = page.goto(f"{flower.url}/tasks", wait_until="networkidle")
            assert response is not None and response.status == 200
            try:
                for contact_id in applied.contact_ids:
                    page.get_by_text(contact_id).first.wait_for(timeout=30_000)
            finally:
                page.screenshot(path=str(shot), full_page=False)  # what the browser showed
            text = page.inner_text("body")
            html = page.content()
        finally:
            browser.close()
    assert TASK in text and "SUCCESS" in text
    for contact_id in applied.contact_ids:
        row = next(line for line in text.splitlines() if contact_id in line)
        assert TASK in row and "SUCCESS" in row and "upd_" in row, row
        assert "[email,phone,position]" in row, row  # the field names, not their values
    leaked = [s for s in applied.secrets if s in text or s in html]
    assert not leaked, leaked
    assert shot.stat().st_size > 10_000
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep:
        shutil.copyfile(shot, ROOT / keep)
