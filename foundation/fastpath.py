"""The busiest route's requests, answered without aiohttp's request machinery when they are plain.

A Telegram webhook cost the gateway a sixth to a ninth of its CPU in aiohttp's request and
response objects, middlewares, router and writer: serving it here took 11-17 % off the CPU per
event at 300-800 events/s (`bench/README.md`). The listener (`foundation/listener.py`) therefore offers every
connection's bytes here first. A request is taken only when all of it is in hand and it is as
plain as HTTP/1.1 gets: the request line `POST <path> HTTP/1.1` with a path a registered
`Route` claims (letters, digits and `/_-.:~` only), at most `MAX_FIELDS` header lines of
visible ASCII, no header name twice, a `Host`, a `Content-Length` of digits within the route's
limit, no `Transfer-Encoding`, `Content-Encoding`, `Expect`, `Upgrade` or `Sec-WebSocket-Key1`, no
`Connection` but `keep-alive`, and a head of at most `MAX_HEAD` bytes. Each of these keeps out
something aiohttp refuses or reads its own way (a test holds the two parsers to the same reading
of every request taken here). Then the route's own checks run
(`Route.take`), and only a request it accepts is served here.

Everything else, from the first byte of the request that was not taken, goes to aiohttp for the
rest of the connection, exactly as if it had arrived there first: this path never answers
malformed input itself, and a request is never read two ways. So whatever aiohttp refuses or
answers (4xx, `100 Continue`, chunked bodies, slow bodies, pipelined requests to other routes)
it still does.

A request served here is answered as the middlewares would answer it: the caller's harmless
`X-Request-Id` (or a fresh one) bound to its logs and sent back, errors turned into the same JSON
answers (`foundation.http.answer_for`), the request counted per route and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import web

from foundation import metrics
from foundation.clock import http_date
from foundation.http import answer_for
from foundation.logs import accept_request_id, request_id

log = logging.getLogger(__name__)

MAX_HEAD = 4096
"""Bytes of request head served here; a longer head goes to aiohttp (whose limits are per line,
8,190 bytes, so no line taken here can be one it refuses)."""
MAX_FIELDS = 32
"""Header lines served here; more go to aiohttp (which refuses over 128)."""
MAX_BUFFER = 1 << 16
"""Bytes read ahead while a request is served; reading pauses above it."""

_LINE = re.compile(rb"POST ([A-Za-z0-9/_\-.:~]+) HTTP/1\.1")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e]*?)[ \t]*")
_REFUSED = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade", "sec-websocket-key1"})


@dataclass(frozen=True, slots=True)
class Request:
    path: str
    headers: Mapping[str, str]
    """Names in lower case, each of which came once."""
    body: bytes


Take = Callable[[Request], Awaitable[bytes] | None]
"""A route's checks: None leaves the request to aiohttp (which answers it as always); otherwise
the work, whose result is the JSON body of a `200`."""


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    """Paths starting with it are offered to `take`."""
    name: str
    """The route as aiohttp names it (`/telegram/webhook/{bot_id}`): the metrics label."""
    limit: int
    """Body bytes at most; a longer body goes to aiohttp (which refuses it)."""
    take: Take


ROUTES = web.AppKey("fast_routes", list[Route])
"""The app's routes served here (a list the app's plugins add to while it starts)."""

_MORE = object()


def _split(buffer: bytes, routes: Sequence[Route], seen: int = 0) -> tuple[Route, Request, int] | object | None:
    """The plain request at the start of `buffer` with its route and size; `_MORE` when the head
    is not complete yet but could still be one; None when it is not one (aiohttp's then).
    `seen`: bytes of `buffer` found to be such a beginning before (a head that comes in pieces
    is searched once, not again at every piece)."""
    start = max(0, seen - 3)
    end = buffer.find(b"\r\n\r\n", start, MAX_HEAD + 4)
    if end < 0:
        if len(buffer) >= MAX_HEAD or b"\n" in buffer[max(0, seen - 1) :].replace(b"\r\n", b""):
            return None
        if any(_could_be(buffer, route) for route in routes):
            return _MORE
        return None
    lines = buffer[:end].split(b"\r\n")
    if len(lines) > MAX_FIELDS + 1:
        return None
    first = _LINE.fullmatch(lines[0])
    if first is None:
        return None
    path = first.group(1).decode()
    route = next((r for r in routes if path.startswith(r.prefix)), None)
    if route is None:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return None
        name = field.group(1).decode().lower()
        if name in _REFUSED or name in headers:
            return None
        headers[name] = field.group(2).decode()
    length = headers.get("content-length", "")
    if "host" not in headers or not length.isdigit() or len(length) > 10 or int(length) > route.limit:
        return None
    if headers.get("connection", "keep-alive").lower() != "keep-alive":
        return None
    size = end + 4 + int(length)
    if len(buffer) < size:
        return None  # the body is still coming: aiohttp's body deadline and limits apply
    return route, Request(path, headers, buffer[end + 4 : size]), size


def _could_be(buffer: bytes, route: Route) -> bool:
    start = b"POST " + route.prefix.encode()
    return buffer.startswith(start) or start.startswith(buffer)


class Lane:
    """One connection's requests while they are served here: one at a time, in order."""

    __slots__ = (
        "_buffer", "_busy", "_done", "_handover", "_idle", "_idle_timeout", "_loop", "_paused", "_routes", "_seen",
        "_tasks", "_transport",
    )  # fmt: skip

    def __init__(
        self,
        routes: Sequence[Route],
        transport: asyncio.Transport,
        handover: Callable[[bytes], None],
        done: Callable[[bool], None],
        tasks: set[asyncio.Task[None]],
        idle_timeout: float,
    ) -> None:
        """`handover(data)` gives the connection to aiohttp from `data` on; `done(started)` tells
        the listener a request began (True) or was answered (False); `tasks` holds the requests
        being served, for a clean stop to wait for; an idle connection is closed after
        `idle_timeout` seconds, as aiohttp closes its own."""
        self._routes, self._transport, self._tasks, self._idle_timeout = routes, transport, tasks, idle_timeout
        self._handover, self._done = handover, done
        self._buffer = b""
        self._busy = self._paused = False
        self._seen = 0
        """Bytes of `_buffer` known to be the beginning of a request that could be taken."""
        self._idle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()  # once a connection, not twice a request (a `getpid` each)

    def feed(self, data: bytes) -> None:
        self._still()
        self._buffer += data
        if self._busy:
            if len(self._buffer) > MAX_BUFFER and not self._paused:
                self._paused = True
                self._transport.pause_reading()
            return
        self._next()

    @property
    def pending(self) -> bool:
        """Bytes of a request not yet taken are in hand."""
        return bool(self._buffer)

    def close(self) -> None:
        self._still()

    def _next(self) -> None:
        if not self._buffer or self._transport.is_closing():
            return
        found = _split(self._buffer, self._routes, self._seen)
        if found is _MORE:
            self._seen = len(self._buffer)
            return
        self._seen = 0
        work = None
        if isinstance(found, tuple):
            route, request, size = found
            try:
                work = route.take(request)
            except Exception:
                # A bug in a route's checks must not cost the request: aiohttp's route answers it.
                log.exception("fast path check failed", extra={"route": route.name})
        if work is None:
            data, self._buffer = self._buffer, b""
            self._handover(data)
            return
        self._buffer = self._buffer[size:]
        self._busy = True
        self._done(True)
        task = self._loop.create_task(self._serve(route, request, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, route: Route, request: Request, work: Awaitable[bytes]) -> None:
        rid = accept_request_id(request.headers.get("x-request-id"))
        token = request_id.set(rid)
        try:
            try:
                status, body, extra = 200, await work, b""
            except Exception as exc:
                response = answer_for(exc, route.name)
                status, body = response.status, bytes(response.body or b"")  # type: ignore[arg-type]
                retry = response.headers.get("Retry-After")
                extra = f"Retry-After: {retry}\r\n".encode() if retry else b""
            metrics.child(metrics.HTTP_REQUESTS, route.name, str(status)).inc()
            if not self._transport.is_closing():
                self._transport.write(_answer(status, body, rid, extra))
        finally:
            request_id.reset(token)
            self._busy = False
            self._done(False)
        if self._paused:
            self._paused = False
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()
        if self._buffer:
            self._next()
        elif not self._transport.is_closing():
            self._idle = self._loop.call_later(self._idle_timeout, self._transport.close)

    def _still(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


def _answer(status: int, body: bytes, rid: str, extra: bytes) -> bytes:
    return b"".join(
        (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode(),
            b"Content-Type: application/json\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\nDate: ",
            http_date(),
            b"\r\nX-Request-Id: ",
            rid.encode(),
            b"\r\n",
            extra,
            b"\r\n",
            body,
        )
    )
