"""Identities: the keys a sync job knows a contact by, in the form they are compared in.

Pure: no I/O. Each identity is unique within an account (DESIGN §2, "Identities and
upsert"); the database enforces that on the forms returned here, stored beside the values
as given.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

EXTERNAL_FIELD_PREFIX = "external_ids."
EXTERNAL_SYSTEM = re.compile(r"[a-z0-9_]{1,32}")
MAX_EXTERNAL_ID_LENGTH = 255
MAX_EXTERNAL_SYSTEMS = 10

_LINKEDIN_HOST = re.compile(r"(?:[a-z0-9-]+\.)*linkedin\.com")
_PROFILE_PATH = re.compile(r"/in/([^/]+)(?:/.*)?")


def email_key(email: str) -> str:
    """Return the form emails are compared in: trimmed, NFC, case-folded."""
    return unicodedata.normalize("NFC", email.strip()).casefold()


def linkedin_key(url: str) -> str:
    """Return the form LinkedIn URLs are compared in.

    A profile URL on any linkedin.com host (`www.`, country and `m.` subdomains), over http
    or https, becomes `linkedin.com/in/<slug>`, the slug percent-decoded, NFC and lower-cased;
    query, fragment, a trailing slash and sub-pages (`/in/x/details/…`) are dropped. Any other
    URL is compared as its host and path, lower-cased, without scheme, query, fragment or a
    trailing slash: such a URL still names one person, just not in a form we can read.
    """
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower().rstrip(".")
    except ValueError:  # `http://[` and the like: no URL, so compared as the text it is
        return url.strip().lower()
    path = parts.path
    if _LINKEDIN_HOST.fullmatch(host):
        profile = _PROFILE_PATH.fullmatch(path)
        if profile:
            slug = unicodedata.normalize("NFC", unquote(profile.group(1))).lower()
            return f"linkedin.com/in/{slug}"
        host = "linkedin.com"
    return f"{host}{unquote(path).rstrip('/')}".lower()


def external_key(system: str, external_id: str) -> str:
    """Return the form an external id is compared in: `system:id`, the id exact."""
    return f"{system}:{external_id}"


def parse_external_id(value: str) -> tuple[str, str] | None:
    """Read `system:id` (as in `?external_id=hubspot:51`); None when it is not one."""
    system, sep, external_id = value.partition(":")
    if not sep or not EXTERNAL_SYSTEM.fullmatch(system):
        return None
    if not 1 <= len(external_id) <= MAX_EXTERNAL_ID_LENGTH:
        return None
    return system, external_id


def stored_key(name: str, value: str) -> str:
    """Return the key an identity is indexed by: a digest of its name and compared form.

    `name` is `email`, `linkedin_url` or `external_ids.<system>`. A digest has one length
    whatever the value's (a LinkedIn URL may be 2,048 characters, past what a B-tree entry
    holds). Not a secret: an email's digest is found by hashing guesses.
    """
    if name == "email":
        form = email_key(value)
    elif name == "linkedin_url":
        form = linkedin_key(value)
    else:
        form = external_key(name.removeprefix(EXTERNAL_FIELD_PREFIX), value)
    return hashlib.sha256(f"{name}\x00{form}".encode()).hexdigest()


def identities_of(
    fields: Mapping[str, str | None], external_ids: Mapping[str, str]
) -> dict[str, str]:
    """Return a contact's identities: field name (`external_ids.<system>`) to stored key."""
    found = {
        name: stored_key(name, value)
        for name in ("email", "linkedin_url")
        if (value := fields.get(name)) is not None
    }
    for system, external_id in external_ids.items():
        name = EXTERNAL_FIELD_PREFIX + system
        found[name] = stored_key(name, external_id)
    return found
