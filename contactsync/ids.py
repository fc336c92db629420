"""Identifiers: random public ids, API keys, and the event id derived from an update id."""

from __future__ import annotations

import base64
import hashlib
import secrets
import string

_KEY_ALPHABET = string.ascii_letters + string.digits
API_KEY_PREFIX = "csk_live_"
API_KEY_RANDOM_LENGTH = 40  # ~238 bits of entropy
KEY_DISPLAY_PREFIX_LENGTH = len(API_KEY_PREFIX) + 8


# Base32's alphabet, lowercase. Each random byte picks a character by its low five bits: as
# uniform as base32 itself (256 is a multiple of 32), and one C call where base64.b32encode is
# a Python loop (half the cost of an async PUT's update id was that loop).
_ALPHABET = b"abcdefghijklmnopqrstuvwxyz234567"
_TO_ALPHABET = bytes.maketrans(bytes(range(256)), bytes(_ALPHABET[i % 32] for i in range(256)))


def _random(length: int) -> str:
    return secrets.token_bytes(length).translate(_TO_ALPHABET).decode("ascii")


def new_contact_id() -> str:
    """Return a new contact id: `cnt_` and 12 lowercase letters and digits."""
    return "cnt_" + _random(12)


def contact_id_for(update_id: str) -> str:
    """Return the id of the contact an upsert creates, fixed by its update id: a redelivery or
    a retry of the upsert makes the same contact, never a second one."""
    digest = hashlib.sha256(b"contact\x00" + update_id.encode("utf-8", "surrogatepass")).digest()
    return "cnt_" + base64.b32encode(digest).decode("ascii")[:12].lower()


def new_update_id() -> str:
    """Return a new update id."""
    return "upd_" + _random(20)


def event_id_for(update_id: str) -> str:
    """Return the event id of an update, fixed so that redelivery never makes a second one."""
    return "evt_" + update_id.removeprefix("upd_")


def new_event_id() -> str:
    """Return a new event id for an event that no update produced (a deletion)."""
    return "evt_" + _random(20)


def new_account_id() -> str:
    """Return a new account id."""
    return "acc_" + _random(16)


def new_key_id() -> str:
    """Return a new API-key record id."""
    return "key_" + _random(16)


def new_webhook_id() -> str:
    """Return a new webhook endpoint id: `whk_` and 20 lowercase letters and digits."""
    return "whk_" + _random(20)


def new_api_key() -> str:
    """Return a new secret API key, to be shown once."""
    return API_KEY_PREFIX + "".join(
        secrets.choice(_KEY_ALPHABET) for _ in range(API_KEY_RANDOM_LENGTH)
    )


def hash_api_key(key: str) -> str:
    """Return the stored form of a key: keys are high-entropy, so a plain SHA-256 suffices."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(key: str) -> str:
    """Return the part of a key that may be shown and used to name it (`keys revoke`)."""
    return key[:KEY_DISPLAY_PREFIX_LENGTH]
