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
        return ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return True  # a name: checked again when it resolves


def is_public_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_global
    except ValueError:
        return False


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
