"""Webhook secrets: the Standard Webhooks form, sealed at rest, and the rotation overlap."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from standardwebhooks import Webhook

from contactsync.models import WebhookEndpoint
from contactsync.settings import Settings
from contactsync.webhook_secrets import (
    SecretKeyError,
    new_secret,
    seal,
    signing_secrets,
    unseal,
)

KEY = SecretStr("k" * 40)
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_new_secret_is_what_the_reference_library_accepts() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert new_secret() != secret
    payload, now = '{"id":"evt_1"}', datetime.now(UTC)
    signature = Webhook(secret).sign("evt_1", now, payload)
    headers = {"webhook-id": "evt_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature}
    Webhook(secret).verify(payload, headers)


def test_seal_round_trips_and_hides_the_secret() -> None:
    settings = Settings(webhook_secret_key=KEY)
    secret = new_secret()
    sealed = seal(secret, settings)
    assert secret not in sealed and secret.removeprefix("whsec_") not in sealed
    assert unseal(sealed, settings) == secret
    assert seal(secret, settings) != sealed  # a fresh IV each time


def test_another_key_cannot_unseal() -> None:
    sealed = seal(new_secret(), Settings(webhook_secret_key=KEY))
    with pytest.raises(SecretKeyError, match="not the key"):
        unseal(sealed, Settings(webhook_secret_key=SecretStr("z" * 40)))


def test_short_key_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(webhook_secret_key=SecretStr("short"))


def test_production_requires_the_key() -> None:
    with pytest.raises(ValidationError, match="CONTACTSYNC_WEBHOOK_SECRET_KEY"):
        Settings(environment="production", flower_basic_auth="a:b")
    with pytest.raises(ValidationError, match="ALLOW_INSECURE"):
        Settings(environment="production", flower_basic_auth="a:b", webhook_secret_key=KEY,
                 webhooks_allow_insecure=True)


def test_development_key_file_made_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "webhook-secret-key"
    settings = Settings(webhook_secret_key_file=path)
    sealed = seal("whsec_abc", settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert unseal(sealed, Settings(webhook_secret_key_file=path)) == "whsec_abc"
    assert list(path.parent.iterdir()) == [path]  # no draft left behind


def test_unusable_key_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "webhook-secret-key"
    path.write_text("\n")
    with pytest.raises(SecretKeyError, match="no usable key"):
        seal("whsec_abc", Settings(webhook_secret_key_file=path))


def _endpoint(
    settings: Settings, previous: str | None, expires: datetime | None
) -> WebhookEndpoint:
    return WebhookEndpoint(
        secret_ciphertext=seal("whsec_new", settings),
        previous_secret_ciphertext=seal(previous, settings) if previous else None,
        previous_secret_expires_at=expires,
    )


def test_signing_secrets_keep_the_previous_one_until_it_expires() -> None:
    settings = Settings(webhook_secret_key=KEY)
    assert signing_secrets(_endpoint(settings, None, None), NOW, settings) == ["whsec_new"]
    overlapping = _endpoint(settings, "whsec_old", NOW + timedelta(hours=1))
    assert signing_secrets(overlapping, NOW, settings) == ["whsec_new", "whsec_old"]
    expired = _endpoint(settings, "whsec_old", NOW)
    assert signing_secrets(expired, NOW, settings) == ["whsec_new"]
    # SQLite hands back naive UTC times.
    naive = _endpoint(settings, "whsec_old", (NOW + timedelta(minutes=1)).replace(tzinfo=None))
    assert signing_secrets(naive, NOW, settings) == ["whsec_new", "whsec_old"]
