"""The SSRF guard for outbound callbacks: a callback URL may only reach public addresses.

Every address the host resolves to is checked (a name with one public and one private address is refused), and
the caller connects to the address that was checked rather than resolving again, so a DNS answer that changes
between check and connect (rebinding) cannot redirect the request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Ranges that `ipaddress` flags do not all cover (or cover differently across Python versions).
_EXTRA_FORBIDDEN = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "240.0.0.0/4",  # reserved, broadcast
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeCallback(ValueError):
    """The callback URL is malformed or points at an address the service must not reach."""


@dataclass(frozen=True, slots=True)
class CheckedTarget:
    """A callback URL together with the address it was checked against: connect to `address`, nothing else."""

    scheme: str
    host: str
    port: int
    address: str
    path: str
    username: str | None = None
    password: str | None = None

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def pinned_url(self) -> str:
        """The URL with the checked IP in place of the host name (Host header and SNI carry the name)."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{address}:{self.port}{self.path}"


def forbidden_reason(address: IPAddress) -> str | None:
    """Why the service must not connect to `address`, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = forbidden_reason(embedded)
            return f"embeds {embedded}, which is {reason}" if reason else None
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("a special-purpose range", any(address in net for net in _EXTRA_FORBIDDEN)),
        ("not globally routable", not address.is_global),
    )
    for reason, hit in checks:
        if hit:
            return reason
    return None


def parse_callback_url(url: str) -> tuple[str, str, int, str, str | None, str | None]:
    """(scheme, host, port, path+query, username, password) of an http(s) URL, or UnsafeCallback."""
    if any(ch in url for ch in "\r\n\t\x00 "):
        raise UnsafeCallback("callback URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeCallback(f"callback URL is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise UnsafeCallback(f"callback URL scheme must be http or https, not {scheme or 'missing'!r}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeCallback("callback URL has no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path, parts.username, parts.password


async def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeCallback(f"callback host {host!r} does not resolve: {exc}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        # Drop an IPv6 zone id ("fe80::1%eth0"): the address itself decides.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeCallback(f"callback host {host!r} has no addresses")
    return addresses


async def check_callback_url(url: str, *, allow_private: bool) -> CheckedTarget:
    """Validate a callback URL and pick the address to connect to; UnsafeCallback when it must not be used.

    With `allow_private` (development and tests only) private and loopback addresses are accepted.
    """
    scheme, host, port, path, username, password = parse_callback_url(url)
    addresses = await resolve_addresses(host, port)
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(address)
            if reason is not None:
                raise UnsafeCallback(f"callback host {host!r} resolves to {address}, which is {reason}")
    return CheckedTarget(
        scheme=scheme,
        host=host,
        port=port,
        address=str(addresses[0]),
        path=path,
        username=username,
        password=password,
    )
