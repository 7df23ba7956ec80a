"""Server URL rules: https only (plain http for loopback outside production), and in
production no address that is not globally routable, checked when connecting."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from gateway.config import is_loopback_host
from gateway.errors import BadRequest


def validate_server_url(url: object, *, production: bool) -> str:
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise BadRequest("invalid_server_url", "server_url must be a URL string of at most 2048 characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise BadRequest("invalid_server_url", "server_url is not a valid URL") from None
    host = parts.hostname
    if not host or parts.username or parts.password or parts.query or parts.fragment:
        raise BadRequest(
            "invalid_server_url",
            "server_url must be scheme://host[:port][/path] without credentials, query or fragment",
        )
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host) and not production):
        pass
    else:
        raise BadRequest(
            "invalid_server_url", "server_url must be https:// (plain http only for loopback outside production)"
        )
    if production and not _may_be_public(host):
        raise BadRequest(
            "invalid_server_url", "server_url must not name a loopback, private, link-local or metadata address"
        )
    return url.rstrip("/")


def _may_be_public(host: str) -> bool:
    if host.lower() in ("localhost", "metadata.google.internal") or host.lower().endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True  # a name: checked again when it resolves
    return is_public_address(host)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def is_public_address(address: str) -> bool:
    """True only for a globally routable unicast address, also when an IPv6 address embeds
    an IPv4 one (mapped, 6to4, Teredo, NAT64): those reach the embedded address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
    return True


class PublicOnlyResolver(ThreadedResolver):
    """Resolves like the default resolver, then refuses any non-global address (SSRF guard)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        public = [r for r in results if is_public_address(r["host"])]
        if not public:
            raise OSError(f"refusing to connect: {host} resolves only to non-public addresses")
        return public

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "PublicOnlyResolver()"
