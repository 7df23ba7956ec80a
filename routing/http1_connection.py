"""One connection of the delivery client (`routing/http1.py`): an asyncio protocol that sends a
request and reads its answer with llhttp's parser (through `httptools`), bounded, and knows
whether the connection may carry the next request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import httptools

MAX_HEAD = 64 * 1024
"""The most bytes taken before an answer's head (interim answers included) is complete."""


class AnswerError(OSError):
    """The server's answer could not be read (malformed, too large a head, or cut short)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    """The `Retry-After` header as sent, if any."""


class Stale(Exception):
    """A reused connection ended before any byte of the answer: the server had closed it."""


class Connection(asyncio.Protocol):
    """One connection and the parse of the answer in progress; `httptools` calls the `on_*`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.spoiled = False
        """Set when the connection may not carry another request (whatever its state)."""
        self.idle_since = 0.0
        self.reused = False
        self.received = 0
        self.head_done = False
        self.framed = False
        self.status = 0
        self.retry_after: str | None = None
        self.taken = 0
        self.limit = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()  # once a connection, not once a request (a `getpid` each)

    @property
    def _answering(self) -> bool:
        """A request is waiting for this answer (its future not yet resolved)."""
        return self.waiter is not None and not self.waiter.done()

    def data_received(self, data: bytes) -> None:
        if not self._answering:
            # Bytes nobody asked for: whatever they are, they must not answer the next request.
            self.close()
            return
        before, self.received = self.received, self.received + len(data)
        if not self.head_done and self.received > MAX_HEAD:
            # Only the head's share of MAX_HEAD is parsed first: a read may bring far more than
            # the bound at once (all of an endless head, with nothing after it to wait for).
            room = MAX_HEAD - before
            if not self._feed(data[:room]):
                return
            if not self.head_done:
                self._fail(AnswerError("the answer's head is too large"))
                return
            data = data[room:]
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False when the answer failed on it."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(AnswerError("the server switched protocols"))
        except httptools.HttpParserError:
            self._fail(AnswerError("malformed answer"))
        else:
            return True
        return False

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._answering:
            return
        if self.head_done and not self.framed and self.status:
            # An answer framed by the connection's end: it ended.
            self._answered()
        elif self.reused and self.received == 0:
            self._fail(Stale())
        else:
            self._fail(AnswerError("the connection ended inside the answer"))

    # httptools' callbacks

    def on_message_begin(self) -> None:
        if not self._answering:
            # A second answer in the same read as the first.
            self.spoiled = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._answering:
            return
        lowered = name.lower()
        if lowered == b"retry-after":
            self.retry_after = value.decode("latin-1")
        elif lowered in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        if not self._answering:
            return
        status = self.parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.retry_after = None
            self.framed = False
            return
        self.status = status
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if not (self._answering and self.head_done):
            return
        self.taken += len(body)
        if self.taken > self.limit:
            # The rest is not read: the connection goes with it.
            self.spoiled = True
            self._answered()
            self.close()

    def on_message_complete(self) -> None:
        if not (self._answering and self.head_done):
            return
        if not self.parser.should_keep_alive():
            self.spoiled = True
        self._answered()

    # The client's side

    def usable(self) -> bool:
        return not (self.closed or self.spoiled or self.transport is None or self.transport.is_closing())

    def reusable(self) -> bool:
        """Usable, and the request's bytes all sent: an answer that came before the whole body
        went out (a server refusing early) would leave the rest of it before the next request."""
        return self.usable() and self.transport is not None and self.transport.get_write_buffer_size() == 0

    async def exchange(self, head: bytes, body: bytes, limit: int, *, reused: bool) -> Answer:
        transport = self.transport
        if transport is None or not self.usable():
            raise Stale if reused else AnswerError("the connection is closed")
        waiter: asyncio.Future[Answer] = self.loop.create_future()
        self.waiter = waiter
        self.reused = reused
        self.received = self.taken = self.status = 0
        self.head_done = self.framed = False
        self.retry_after = None
        self.limit = limit
        if len(body) < 16 * 1024:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            self.waiter = None

    def close(self) -> None:
        self.spoiled = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _answered(self) -> None:
        assert self.waiter is not None
        self.waiter.set_result(Answer(self.status, self.retry_after))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()
