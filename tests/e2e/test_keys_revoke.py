"""`contactsync keys revoke`: the shown prefix names exactly one key, anything else revokes none."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import select

from contactsync.ids import KEY_DISPLAY_PREFIX_LENGTH, hash_api_key, new_key_id
from contactsync.models import ApiKey
from contactsync.timeutil import utcnow
from tests.conftest import Stack
from tests.e2e.helpers import new_tenant
from tests.support import ROOT, service_env

pytestmark = pytest.mark.slow  # a CLI process per step, and waits out the key cache


def _revoke(stack: Stack, name: str) -> subprocess.CompletedProcess[str]:
    env = service_env(stack.settings.database_url, stack.settings.redis_url)
    return subprocess.run(
        [sys.executable, "-m", "cli", "keys", "revoke", name],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def _live(stack: Stack) -> set[str]:
    with stack.db.reading() as session:
        return set(session.scalars(select(ApiKey.prefix).where(ApiKey.revoked_at.is_(None))))


def _refused(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("contactsync: error: "), result.stderr
    return lines[0]


def test_revoke_takes_the_shown_prefix_and_revokes_exactly_one_key(stack: Stack) -> None:
    keys = [new_tenant(stack, account).key for account in ("acme", "acme", "globex")]
    shown = [key[:KEY_DISPLAY_PREFIX_LENGTH] for key in keys]
    assert _live(stack) == set(shown)
    too_short = ["csk_live", "csk_live_", shown[0][:-1], shown[0][:8], "csk", ""]
    malformed = [shown[0] + "x", "csk_live_%%%%%%%%", "csk_live_________", " " + shown[0],
                 shown[0].upper(), keys[0] + "\n", keys[0][:-1]]
    for name in too_short + malformed:
        line = _refused(_revoke(stack, name), 2)
        assert "csk_live_" in line and keys[0][:-1] not in line, line  # never echoes a secret
    assert _live(stack) == set(shown)
    assert "no active key" in _refused(_revoke(stack, "csk_live_zzzzzzzz"), 1)
    assert _live(stack) == set(shown)

    done = _revoke(stack, shown[1])
    assert (done.returncode, done.stdout, done.stderr) == (0, f"revoked {shown[1]}…\n", "")
    assert _live(stack) == {shown[0], shown[2]}
    assert "no active key" in _refused(_revoke(stack, shown[1]), 1)  # already revoked
    as_listed = _revoke(stack, shown[2] + "…")  # copied from `keys list`, ellipsis and all
    assert as_listed.returncode == 0, as_listed
    whole = _revoke(stack, keys[0])
    assert whole.returncode == 0, whole
    assert _live(stack) == set()


def test_a_prefix_shared_by_two_live_keys_revokes_neither(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    shown = tenant.key[:KEY_DISPLAY_PREFIX_LENGTH]
    twin = shown + "y" * 32
    other = new_tenant(stack, "globex")
    with stack.db.unit_of_work() as session:  # create_key never makes one; planted to be sure
        owner = session.scalar(select(ApiKey.account_id).where(
            ApiKey.key_hash == hash_api_key(other.key)
        ))
        assert owner is not None
        session.add(ApiKey(
            id=new_key_id(), account_id=owner, prefix=shown, key_hash=hash_api_key(twin),
            permissions=["contacts:read"], rate_limit_per_second=None, created_at=utcnow(),
            revoked_at=None,
        ))
    line = _refused(_revoke(stack, shown), 2)
    assert "more than one key" in line, line
    with stack.db.reading() as session:
        assert session.scalars(
            select(ApiKey.id).where(ApiKey.revoked_at.is_not(None))
        ).all() == []
    assert _revoke(stack, twin).returncode == 0  # the whole key still names one
    assert _live(stack) == {shown, other.key[:KEY_DISPLAY_PREFIX_LENGTH]}
