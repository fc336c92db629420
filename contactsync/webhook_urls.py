"""Which webhook URLs may be called: https to public addresses only (no SSRF).

Checked when an endpoint is registered or changed, and again before each delivery, since what
a name resolves to can change after registration.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from contactsync.errors import ContactSyncError


class UnsafeWebhookUrl(ContactSyncError):
    """A webhook URL that must not be called; `reason` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_url(url: str, *, allow_insecure: bool) -> None:
    """Raise UnsafeWebhookUrl unless `url` is https and every address of its host is public.

    `allow_insecure` (development, tests) lifts the scheme and address rules, not the rest.
    """
    parts = _split(url)
    if parts.scheme not in ("https", "http"):
        raise UnsafeWebhookUrl("the URL must start with https://")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl("the URL must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise UnsafeWebhookUrl("the URL has no host")
    if allow_insecure:
        return
    if parts.scheme != "https":
        raise UnsafeWebhookUrl("the URL must start with https://")
    for address in _resolve(host, parts):
        problem = _non_public(address)
        if problem:
            named = host if host == str(address) else f"{host} resolves to {address}, which"
            raise UnsafeWebhookUrl(f"{named} is {problem}: webhooks go to public addresses only")


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise UnsafeWebhookUrl("the URL is not valid") from exc
    return parts


def _resolve(host: str, parts: SplitResult) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookUrl(f"the host {host} does not resolve") from exc
    addresses = []
    for info in infos:
        # An IPv6 address may carry a zone (`fe80::1%eth0`), which ipaddress does not parse.
        text = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(text)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        addresses.append(address)
    if not addresses:
        raise UnsafeWebhookUrl(f"the host {host} does not resolve")
    return addresses


def _non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:  # shared (100.64/10), documentation and the like
        return "a reserved address"
    return None
