"""The delivery's HTTP client: one `PUT` at a time per connection, HTTP/1.1 kept alive, a pool of
idle connections per origin.

Deliveries are the one request the gateway makes per event; aiohttp's client spent about
170 µs of CPU on each beyond what the exchange itself needs (`python -m bench.http_client`).
This client does only what a delivery needs, with the same guards:

- **Parsing** is llhttp's (through `httptools`, the C parser Node.js uses, strict by default):
  status line, headers, framing by Content-Length, chunked or the connection's end, interim
  1xx answers skipped. At most `MAX_HEAD` bytes are parsed before an answer's head (interim
  answers included) is complete, however the reads bring them, and at most `limit` bytes of
  its body. A connection whose answer was not read to its end, that may not carry another
  (`Connection: close`, HTTP/1.0), or on which the server sent anything more than its answer,
  is closed, never reused.
- **Where it connects**: with `production`, names are resolved by `PublicOnlyResolver` and
  every socket is made by `public_socket` with the very address it connects to: the checks the
  production aiohttp connector makes (`routing/urls.py`). A name's addresses serve new
  connections for `DNS_TTL` seconds, until a connection to none of them succeeds. TLS with
  the gateway's client context, the URL's host as the name checked.
- **What it sends** is built here from checked parts: the URL's path percent-encoded where it
  is not plain, header names and values refused if they could end a line. Redirects are
  answers like any other (the caller does not follow them); no cookies, no compression asked
  for, no proxy from the environment.
- **A kept-alive connection the server had closed** fails the request before any byte of an
  answer: the request is then sent once more on a new connection (a delivery is idempotent:
  same transaction id, same body).
- **Time**: the caller bounds the whole request (`asyncio.timeout`); a request cut short closes
  its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from routing.http1_connection import MAX_HEAD, Answer, AnswerError, Connection, Stale
from routing.urls import PublicOnlyResolver, public_socket

IDLE_TIMEOUT = 15.0
"""Seconds an idle connection is kept for its next request."""
IDLE_PER_ORIGIN = 256
"""Idle connections kept per origin: one host may serve many users (a path per user), and each
delivery in flight to it holds a connection; beyond this, a busy origin's are closed after use."""
IDLE_TOTAL = 1000
DNS_TTL = 60.0
"""Seconds a name's addresses are reused for new connections (aiohttp's connector did the same)."""
DNS_CACHED = 1024
_LINE_SAFE = re.compile(r"[!-~][ -~]*")
"""A header value: printable ASCII, no line end."""
_VISIBLE = re.compile(r"[!-~]+")
"""A host or a request target: printable ASCII without spaces."""
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

__all__ = ["MAX_HEAD", "Answer", "AnswerError", "Client"]


@dataclass(frozen=True, slots=True)
class _Origin:
    tls: bool
    host: str
    port: int
    host_header: str


class Client:
    """PUTs bodies to servers' URLs; `close()` ends every idle connection."""

    def __init__(self, *, production: bool, tls: ssl.SSLContext, resolver: AbstractResolver | None = None) -> None:
        self._production = production
        self._tls = tls
        self._resolver = resolver or (PublicOnlyResolver() if production else ThreadedResolver())
        self._idle: dict[_Origin, list[Connection]] = {}
        self._idle_count = 0
        self._last_sweep = time.monotonic()
        self._closed = False
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, int, tuple[Any, ...]]]]] = {}

    async def put(
        self, base_url: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, *, limit: int
    ) -> Answer:
        """Send `body` to `base_url` + `path` (a path of plain characters); read at most `limit`
        bytes of the answer's body. Errors are `OSError`s (`AnswerError`, `ssl.SSLError`, ...)."""
        if self._closed:
            raise OSError("the delivery client is closed")
        origin, base_path = _split(base_url)
        head = _head(origin, base_path + path, headers, len(body))
        if time.monotonic() - self._last_sweep >= IDLE_TIMEOUT / 3:
            self._sweep()
        for _ in range(2):
            connection = self._take(origin)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(origin)
            try:
                answer = await connection.exchange(head, body, limit, reused=reused)
            except Stale:
                continue
            if connection.reusable():
                self._give_back(origin, connection)
            else:
                connection.close()
            return answer
        raise AnswerError("the server closed the connection before answering")

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        self._idle_count = 0
        with contextlib.suppress(Exception):
            await self._resolver.close()

    def _sweep(self) -> None:
        """Close the idle connections past `IDLE_TIMEOUT` (the servers of users who went quiet)."""
        now = self._last_sweep = time.monotonic()
        for origin in list(self._idle):
            connections = self._idle[origin]
            kept = [c for c in connections if _kept(c, now)]
            for connection in connections:
                if connection not in kept:
                    connection.close()
            self._idle_count -= len(connections) - len(kept)
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]

    def _take(self, origin: _Origin) -> Connection | None:
        connections = self._idle.get(origin)
        now = time.monotonic()
        while connections:
            connection = connections.pop()
            self._idle_count -= 1
            if _kept(connection, now):
                return connection
            connection.close()
        return None

    def _give_back(self, origin: _Origin, connection: Connection) -> None:
        connections = self._idle.setdefault(origin, [])
        if self._closed or len(connections) >= IDLE_PER_ORIGIN or self._idle_count >= IDLE_TOTAL:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        connections.append(connection)
        self._idle_count += 1

    async def _connect(self, origin: _Origin) -> Connection:
        loop = asyncio.get_running_loop()
        last: Exception | None = None
        for family, proto, address in await self._addresses(origin):
            try:
                if self._production:
                    sock = public_socket((family, socket.SOCK_STREAM, proto, "", address))
                else:
                    sock = socket.socket(family, socket.SOCK_STREAM, proto)
            except OSError as exc:
                last = exc
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
                _, connection = await loop.create_connection(
                    Connection,
                    sock=sock,
                    ssl=self._tls if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                last = exc
                continue
            return connection
        # None of the addresses took the connection: the next attempt asks the resolver again.
        self._dns.pop((origin.host, origin.port), None)
        raise last if last is not None else OSError("no address to connect to")

    async def _addresses(self, origin: _Origin) -> list[tuple[int, int, tuple[Any, ...]]]:
        """Where to connect, in order: an IP literal as it is (the socket's check still applies),
        a name through the resolver (in production, public addresses only)."""
        family = socket.AF_INET6 if ":" in origin.host else socket.AF_INET
        try:
            socket.inet_pton(family, origin.host)
        except OSError:
            pass
        else:
            return [_address(family, origin.host, origin.port)]
        now = time.monotonic()
        cached = self._dns.get((origin.host, origin.port))
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._resolver.resolve(origin.host, origin.port, family=socket.AF_UNSPEC)
        addresses = [_address(int(r["family"]), r["host"], int(r["port"])) for r in found]
        if len(self._dns) >= DNS_CACHED:
            self._dns.clear()
        self._dns[(origin.host, origin.port)] = (now + DNS_TTL, addresses)
        return addresses


def _kept(connection: Connection, now: float) -> bool:
    """An idle connection may still carry a request: not idle too long, nothing wrong with it."""
    return now - connection.idle_since < IDLE_TIMEOUT and connection.usable()


def _address(family: int, host: str, port: int) -> tuple[int, int, tuple[Any, ...]]:
    """Family, protocol and socket address, as `sock_connect` takes them."""
    if family == socket.AF_INET6:
        return (socket.AF_INET6, socket.IPPROTO_TCP, (host, port, 0, 0))
    return (socket.AF_INET, socket.IPPROTO_TCP, (host, port))


@functools.lru_cache(maxsize=4096)
def _split(url: str) -> tuple[_Origin, str]:
    """The origin and the path (percent-encoded where not plain) of a server's URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OSError("not a valid URL") from None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or parts.query or parts.fragment or parts.username:
        raise OSError("not an http(s) URL without credentials, query or fragment")
    if not _VISIBLE.fullmatch(host):
        raise OSError("the URL's host is not plain ASCII")
    tls = parts.scheme == "https"
    port = port or (443 if tls else 80)
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
    # Escapes already in the path stay as they are; a `%` that starts none is a character.
    path = _BARE_PERCENT.sub("%25", parts.path)
    return _Origin(tls, host, port, host_header), quote(path, safe=_PATH_SAFE)


def _head(origin: _Origin, target: str, headers: Sequence[tuple[str, str]], length: int) -> bytes:
    if not target.startswith("/"):
        target = "/" + target
    if not _VISIBLE.fullmatch(target):
        raise OSError("the request's path is not plain")
    lines = [f"PUT {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or not _LINE_SAFE.fullmatch(value):
            raise OSError("a header that could end its line")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    return "".join(lines).encode("ascii")
