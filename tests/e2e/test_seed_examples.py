"""The seed document's own request examples, run as written against the real gateway.

The examples and the expected response are read from `shared/seed/update-contact.md`, not
copied: only the host and `YOUR_API_KEY` are replaced. Node.js runs the seed's axios code
over a small stand-in for axios built on Node's own `fetch` (axios is not installed here).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.conftest import Stack, make_contact
from tests.e2e.helpers import (
    CONTACT_KEYS,
    TIME,
    get_contact,
    new_tenant,
    settled_events,
)
from tests.support import ROOT, require_service

# The seed beside the checkout is the source; the copy in the repo serves a checkout alone.
_SHARED_SEED = Path(ROOT).parent / "shared" / "seed" / "update-contact.md"
_REPO_SEED = Path(__file__).with_name("seed") / "update-contact.md"
SEED = _SHARED_SEED if _SHARED_SEED.exists() else _REPO_SEED
SEED_HOST = "https://app.getraze.com"
SEED_KEY = "YOUR_API_KEY"
SEED_CONTACT = "cnt_abc123def456"


def _blocks() -> dict[str, str]:
    """Return the seed's fenced code blocks by label (`cURL`, `Node.js`, `Python`, `json`)."""
    text = SEED.read_text()
    blocks = {label: code for _, label, code in re.findall(
        r"^```(\w+) \[([^\]]+)\]\n(.*?)^```", text, flags=re.M | re.S
    )}
    response = re.search(r"## Response\s+```json\n(.*?)^```", text, flags=re.M | re.S)
    assert response is not None, "the seed has no JSON response example"
    blocks["json"] = response.group(1)
    return blocks


@pytest.fixture(scope="module")
def seed() -> dict[str, str]:
    if not SEED.exists():
        pytest.fail(f"the seed document is missing: {SEED}")
    blocks = _blocks()
    assert {"cURL", "Node.js", "Python", "json"} <= set(blocks), sorted(blocks)
    return blocks


@pytest.fixture
def expected(seed: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(seed["json"])
    assert body["success"] is True and body["data"]["id"] == SEED_CONTACT
    return body


class Target:
    """The seed's contact in a fresh account, and how to point an example at it."""

    def __init__(self, stack: Stack, expected: dict[str, Any]) -> None:
        self.stack = stack
        tenant = new_tenant(stack, "seed")
        self.key = tenant.key
        data = expected["data"]
        # The contact as it was before the example: the seed's, but for what the example sets.
        self.contact_id = make_contact(
            stack.db, tenant.account_id, id=SEED_CONTACT, name=data["name"],
            email=data["email"], phone=data["phone"], company=data["company"],
            position="Engineer", source=data["source"], linkedin_url=data["linkedin_url"],
            tags=["cold"], custom_fields=data["custom_fields"],
        )

    def localize(self, code: str) -> str:
        assert SEED_HOST in code and SEED_KEY in code, code
        return code.replace(SEED_HOST, self.stack.base_url).replace(SEED_KEY, self.key)


@pytest.fixture
def target(stack: Stack, expected: dict[str, Any]) -> Target:
    return Target(stack, expected)


def _check(target: Target, body: dict[str, Any], expected: dict[str, Any]) -> None:
    """Check an example's answer has the seed's shape and values, and it applied once."""
    assert set(body) == {"success", "data"} and body["success"] is True, body
    data, seed_data = body["data"], expected["data"]
    # external_ids is the one field beyond the seed's shape (DESIGN §2, "Shapes").
    assert set(data) == set(seed_data) | {"external_ids"} == CONTACT_KEYS
    assert data["external_ids"] == {}
    times = ("created_at", "updated_at")
    assert {k: v for k, v in data.items() if k not in (*times, "external_ids")} == {
        k: v for k, v in seed_data.items() if k not in times
    }
    assert data["position"] == "VP of Engineering"
    assert data["tags"] == ["hot-lead", "enterprise"]
    assert all(TIME.match(data[k]) for k in times), data
    assert data["updated_at"] > data["created_at"]
    assert get_contact(target.stack, target.key, target.contact_id) == data
    (event,) = settled_events(target.stack)
    assert set(event["changes"]) == {"position", "tags"}


def test_the_curl_example(target: Target, seed: dict[str, str], expected: dict[str, Any]) -> None:
    curl = shutil.which("curl")
    require_service("curl", curl is not None)
    args = shlex.split(target.localize(seed["cURL"]).replace("\\\n", " "))
    assert args[0] == "curl"
    ran = subprocess.run(
        [str(curl), *args[1:], "--silent", "--show-error", "--write-out", "\n%{http_code}"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert ran.returncode == 0, ran.stderr
    body, _, status = ran.stdout.rpartition("\n")
    assert status == "200", ran.stdout
    _check(target, orjson.loads(body), expected)


# Enough of axios for the seed's example, on Node's own fetch; console.log prints JSON.
_AXIOS_ON_FETCH = """
const axiosOnFetch = {
  async put(url, data, config = {}) {
    const response = await fetch(url, {
      method: 'PUT', headers: config.headers, body: JSON.stringify(data),
    });
    const body = await response.json();
    if (!response.ok) {
      throw new Error(`Request failed with status ${response.status}: ${JSON.stringify(body)}`);
    }
    return { status: response.status, headers: Object.fromEntries(response.headers), data: body };
  },
};
const require = (name) => {
  if (name !== 'axios') throw new Error(`only axios is provided, not ${name}`);
  return axiosOnFetch;
};
console.log = (value) => process.stdout.write(JSON.stringify(value) + '\\n');
"""


def test_the_node_example(
    target: Target, seed: dict[str, str], expected: dict[str, Any], tmp_path: Path
) -> None:
    node = shutil.which("node")
    require_service("node", node is not None)
    script = tmp_path / "update-contact.mjs"  # a module: the seed awaits at top level
    script.write_text(_AXIOS_ON_FETCH + target.localize(seed["Node.js"]))
    ran = subprocess.run(
        [str(node), str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert ran.returncode == 0, ran.stderr
    _check(target, orjson.loads(ran.stdout), expected)


def test_the_python_example(
    target: Target, seed: dict[str, str], expected: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(target.localize(seed["Python"]), str(SEED), "exec"), namespace)
    response = namespace["response"]
    assert isinstance(response, requests.Response)
    assert response.status_code == 200, response.text
    assert response.request.headers["X-API-Key"] == target.key
    assert str(response.json()) in capsys.readouterr().out  # what the example prints
    _check(target, response.json(), expected)
    response.close()
