"""Webhook URLs: https to public addresses only, unless insecure URLs are allowed."""

from __future__ import annotations

import pytest

from contactsync.webhook_urls import UnsafeWebhookUrl, check_url

REFUSED = [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://[::1]/hook", "loopback"),
    ("https://10.1.2.3/hook", "private"),
    ("https://172.16.0.9/hook", "private"),
    ("https://192.168.1.20/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/hook", "link-local"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://[::ffff:10.0.0.1]/hook", "private"),
    ("https://localhost/hook", "loopback"),
    ("https://localhost:8443/hook", "loopback"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://224.0.0.1/hook", "multicast"),
    ("https://100.64.0.1/hook", "reserved"),
    ("https://240.0.0.1/hook", "reserved"),
    ("http://93.184.216.34/hook", "https://"),
    ("ftp://93.184.216.34/hook", "https://"),
    ("https://user:pass@93.184.216.34/hook", "user name or password"),
    ("https://user@93.184.216.34/hook", "user name or password"),
    ("https:///hook", "no host"),
    ("https://93.184.216.34:port/hook", "not valid"),
    ("https://no-such-host.invalid/hook", "does not resolve"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeWebhookUrl) as caught:
        check_url(url, allow_insecure=False)
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "url",
    ["https://93.184.216.34/hook", "https://93.184.216.34:8443/a?b=c", "https://[2606:4700::1111]/"],
)
def test_public_literal_accepted(url: str) -> None:
    check_url(url, allow_insecure=False)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/hook", "https://localhost/hook", "http://[::1]:8080/",
            "http://10.0.0.5/hook", "http://169.254.169.254/"]
)
def test_allow_insecure_lifts_scheme_and_address(url: str) -> None:
    check_url(url, allow_insecure=True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [("ftp://127.0.0.1/", "https://"), ("http://user:pw@127.0.0.1/", "user name or password")],
)
def test_allow_insecure_keeps_the_other_rules(url: str, reason: str) -> None:
    with pytest.raises(UnsafeWebhookUrl) as caught:
        check_url(url, allow_insecure=True)
    assert reason in caught.value.reason


def test_every_address_of_a_name_must_be_public(monkeypatch: pytest.MonkeyPatch) -> None:
    # A name with one public and one private address is refused: a client may pick either.
    import socket

    def fake(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port))
                for addr in ("93.184.216.34", "10.0.0.7")]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(UnsafeWebhookUrl, match=r"10\.0\.0\.7"):
        check_url("https://mixed.example/hook", allow_insecure=False)
