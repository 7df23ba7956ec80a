"""Server URL rules: https only (plain http for loopback outside production), and in
production no address that is not globally routable.

A host is read the way a WHATWG URL parser (and so yarl, and so aiohttp) reads it before any
rule is applied: percent-decoded, mapped by UTS #46 (which folds fullwidth digits, circled
digits and ideographic full stops: `１２７.０.０.１`, `①②⑦.0.0.1` and `127。0。0。1` are all
127.0.0.1), and a host whose last label is a number parsed as IPv4 the way browsers do
(`0x7f000001`, `2130706433`, `127.1`, `0177.0.0.1`). What is left must be plain ASCII. The
normalized URL is what gets stored and used.

In production the check is made twice: at registration, and again when connecting, on the
address the socket is about to connect to (`public_only_connector`): a name that resolves to a
private address, and an IP literal that aiohttp connects to without asking a resolver, are both
refused before a byte is sent.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import aiohttp
import idna
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from foundation.config import is_loopback_host
from foundation.errors import BadRequest

_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
_DIGITS = {8: re.compile(r"^[0-7]*$"), 10: re.compile(r"^[0-9]+$"), 16: re.compile(r"^[0-9a-f]*$")}
_NOT_PUBLIC_NAMES = ("localhost", "metadata.google.internal")


def _refuse(detail: str) -> BadRequest:
    return BadRequest("invalid_server_url", detail)


def validate_server_url(url: object, *, production: bool) -> str:
    """The normalized URL (scheme://host[:port][/path], no trailing slash), or `BadRequest`."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise _refuse("server_url must be a URL string of at most 2048 characters")
    try:
        parts = urlsplit(url)
        port = _port(parts)
    except ValueError:
        raise _refuse("server_url is not a valid URL") from None
    if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise _refuse("server_url must be scheme://host[:port][/path] without credentials, query or fragment")
    host = normalize_host(parts.hostname, bracketed="[" in parts.netloc)
    if not (parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(host) and not production)):
        raise _refuse("server_url must be https:// (plain http only for loopback outside production)")
    if production and not _may_be_public(host):
        raise _refuse("server_url must not name a loopback, private, link-local or metadata address")
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def _port(parts: SplitResult) -> int | None:
    raw = parts.netloc.rpartition("]")[2].rpartition("@")[2].partition(":")[2]
    if not raw:
        return None
    # urlsplit's own port would take fullwidth digits (int() does); only ASCII digits are a port.
    if not (raw.isascii() and raw.isdigit() and 0 < int(raw) < 65536):
        raise ValueError("bad port")
    return int(raw)


def normalize_host(host: str, *, bracketed: bool = False) -> str:
    """The host as a WHATWG URL parser sees it: an IPv4 address, `[IPv6]`, or an ASCII name."""
    if bracketed:
        try:
            if "%" in host:
                raise ValueError("zone ids are not part of a URL")
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise _refuse("server_url has an invalid IPv6 address") from None
    try:
        decoded = unquote(host, errors="strict")
        mapped = idna.uts46_remap(decoded, std3_rules=False, transitional=False)
    except (UnicodeError, idna.IDNAError):
        raise _refuse("server_url has a host that is not a valid domain name") from None
    if not mapped.isascii() or not _NAME.match(mapped):
        raise _refuse("server_url host must be plain ASCII (letters, digits, '-', '.'); use the xn-- form")
    labels = mapped.removesuffix(".").split(".")
    if _is_number(labels[-1]):
        return _ipv4(labels)
    return mapped


def _number(part: str) -> int | None:
    """An IPv4 part as browsers read it: 0x… hexadecimal, 0… octal, else decimal."""
    if part[:2] == "0x":
        digits, base = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not _DIGITS[base].match(digits):
        return None
    return int(digits, base) if digits else 0


def _is_number(label: str) -> bool:
    return label.isdigit() or (label.startswith("0x") and _number(label) is not None)


def _ipv4(labels: list[str]) -> str:
    numbers = [_number(label) for label in labels]
    if len(numbers) > 4 or any(n is None for n in numbers):
        raise _refuse("server_url host ends in a number but is not an IPv4 address")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise _refuse("server_url host is an IPv4 address out of range")
    address = values[-1]
    for i, n in enumerate(values[:-1]):
        address += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(address))


def _may_be_public(host: str) -> bool:
    name = host.removesuffix(".")
    if name in _NOT_PUBLIC_NAMES or name.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return True  # a name: checked again when it resolves and when the socket connects
    return is_public_address(name)


_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def is_public_address(address: str) -> bool:
    """True only for a globally routable unicast address, also when an IPv6 address embeds
    an IPv4 one (mapped, translated, 6to4, Teredo, NAT64): those reach the embedded address.
    IPv4-compatible addresses (`::a.b.c.d`, deprecated by RFC 4291) are never public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL or ip in _IPV4_COMPATIBLE:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and (ip in _NAT64 or ip in _IPV4_TRANSLATED):
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


def public_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohttp's `socket_factory`: called with the very address about to be connected to, for
    names and IP literals alike, so nothing reaches a non-public address whatever the URL said."""
    family, kind, proto, _name, address = addr_info
    if not is_public_address(str(address[0])):
        raise OSError("refusing to connect to a non-public address")
    return socket.socket(family=family, type=kind, proto=proto)


def public_only_connector(resolver: AbstractResolver | None = None, **kwargs: Any) -> aiohttp.TCPConnector:
    """A connector that connects to public addresses only (production's outbound HTTP)."""
    return aiohttp.TCPConnector(resolver=resolver or PublicOnlyResolver(), socket_factory=public_socket, **kwargs)
