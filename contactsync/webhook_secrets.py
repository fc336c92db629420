"""Webhook signing secrets: made, sealed at rest, and which of them sign at a given time.

A secret is sealed with Fernet (AES-128-CBC and HMAC-SHA256, from `cryptography`) under a key
derived from CONTACTSYNC_WEBHOOK_SECRET_KEY. Unset, which production refuses, the key comes from
a random file made on first use (`webhook_secret_key_file`), so a development stack works with
no setup and still keeps no plain secret in its database.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from contactsync.errors import ContactSyncError
from contactsync.settings import Settings
from contactsync.timeutil import as_utc

if TYPE_CHECKING:
    from contactsync.models import WebhookEndpoint

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
# After a rotation the previous secret keeps signing beside the new one for this long, so a
# receiver can switch without losing an event.
ROTATION_OVERLAP = timedelta(hours=24)


class SecretKeyError(ContactSyncError):
    """The key that seals webhook secrets is missing, unreadable, or not the one that sealed."""


def new_secret() -> str:
    """Return a new signing secret in the Standard Webhooks form: `whsec_` + base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def seal(secret: str, settings: Settings) -> str:
    """Return the secret encrypted under the settings' key, to be stored."""
    return _fernet(_master_key(settings)).encrypt(secret.encode("utf-8")).decode("ascii")


def unseal(ciphertext: str, settings: Settings) -> str:
    """Return the secret that `seal` encrypted; SecretKeyError if the key does not open it."""
    try:
        return _fernet(_master_key(settings)).decrypt(ciphertext.encode("ascii")).decode("utf-8")
    except (InvalidToken, ValueError) as exc:
        raise SecretKeyError(
            "a webhook secret cannot be decrypted: CONTACTSYNC_WEBHOOK_SECRET_KEY is not the key "
            "it was stored under"
        ) from exc


def signing_secrets(
    endpoint: WebhookEndpoint, now: datetime, settings: Settings
) -> list[str]:
    """Return the secrets that sign for the endpoint at `now`: the current one first, then the
    previous one while its overlap after a rotation lasts."""
    signing = [unseal(endpoint.secret_ciphertext, settings)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret_ciphertext and expires and as_utc(expires) > as_utc(now):
        signing.append(unseal(endpoint.previous_secret_ciphertext, settings))
    return signing


def _master_key(settings: Settings) -> str:
    if settings.webhook_secret_key is not None:
        return settings.webhook_secret_key.get_secret_value()
    if settings.environment == "production":
        raise SecretKeyError("CONTACTSYNC_WEBHOOK_SECRET_KEY must be set in production")
    return _development_key(settings.webhook_secret_key_file)


def _development_key(path: Path) -> str:
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and linked into place: processes starting together (gateway, workers,
        # the CLI) all read the one key that won, never a half-written file.
        draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
        finally:
            draft.unlink()
        return _read_key(path)
    except OSError as exc:
        raise SecretKeyError(
            f"cannot read or make the webhook secret key file {path}: {exc.strerror}"
        ) from exc


def _read_key(path: Path) -> str:
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise SecretKeyError(f"the webhook secret key file {path} holds no usable key")
    return key


@lru_cache(maxsize=4)
def _fernet(master_key: str) -> Fernet:
    # HKDF turns any long random string into the 32 bytes Fernet wants, so an operator may set
    # the output of `openssl rand -base64 32` or any password manager's 32+ characters.
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"contactsync webhook secrets"
    ).derive(master_key.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(derived))
