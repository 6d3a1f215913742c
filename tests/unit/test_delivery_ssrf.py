"""The SSRF guard: which addresses a callback may reach, URL parsing, and the pinned request target."""

from __future__ import annotations

import ipaddress

import pytest

from delivery.ssrf import UnsafeCallback, check_callback_url, forbidden_reason, parse_callback_url


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "0.0.0.0",
        "::",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "192.0.2.10",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.1.2.3",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "100.128.0.1"],
)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://x",
        "http://",
        "http://exa mple.com/",
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com:99999/",
        "//example.com/",
    ],
)
def test_unusable_urls(url: str) -> None:
    with pytest.raises(UnsafeCallback):
        parse_callback_url(url)


async def test_literal_addresses_are_checked_without_dns() -> None:
    with pytest.raises(UnsafeCallback, match=r"link-local|special|not globally"):
        await check_callback_url("http://169.254.169.254/latest/meta-data", allow_private=False)
    target = await check_callback_url("https://[2606:4700:4700::1111]:8443/hook?a=1", allow_private=False)
    assert target.pinned_url == "https://[2606:4700:4700::1111]:8443/hook?a=1"
    assert target.host_header == "[2606:4700:4700::1111]:8443"


async def test_allow_private_for_development() -> None:
    target = await check_callback_url("http://127.0.0.1:8080/cb", allow_private=True)
    assert (target.address, target.port, target.path, target.host_header) == (
        "127.0.0.1",
        8080,
        "/cb",
        "127.0.0.1:8080",
    )


async def test_names_are_resolved_and_every_address_checked() -> None:
    with pytest.raises(UnsafeCallback, match="localhost"):
        await check_callback_url("http://localhost/cb", allow_private=False)
    with pytest.raises(UnsafeCallback, match="does not resolve"):
        await check_callback_url("http://no-such-host.invalid/cb", allow_private=False)
