"""The fast path's reading of a request (`fastpath._split`) against aiohttp's own parser (llhttp).

The fast path may take a request only where aiohttp would read the very same request: the same
method and path, the same body, the same end, and the same value for every header the route is
given. Hypothesis builds near-plain webhook requests and bends them the ways a hostile client
would (folded, repeated, missing or oddly spaced headers, bare line feeds, control bytes, other
versions, a body longer or shorter than announced); whenever `_split` takes one, llhttp must
read it the same way, and it must not refuse it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import HttpVersion11, http_exceptions, http_parser
from aiohttp.base_protocol import BaseProtocol
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from foundation import fastpath

PATH = "/telegram/webhook/123456"
ROUTE = fastpath.Route("/telegram/webhook/", "/telegram/webhook/{bot_id}", 4096, lambda _request: None)
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = [
    "Host", "host", "HOST", "Content-Length", "content-length", "Content-Type", "Connection",
    "Transfer-Encoding", "Expect", "Upgrade", "Content-Encoding", "X-Request-Id",
    "X-Telegram-Bot-Api-Secret-Token", "Accept", "X-Custom", "Sec-WebSocket-Key1", "User-Agent",
]  # fmt: skip
VISIBLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
ODD_LINES = [
    f"POST {PATH} HTTP/1.0",
    f"post {PATH} HTTP/1.1",
    f"POST  {PATH} HTTP/1.1",
    f"POST {PATH}/../../healthz HTTP/1.1",
    f"POST {PATH}?a=b HTTP/1.1",
    f"POST {PATH}%2F HTTP/1.1",
    f"POST http://gateway{PATH} HTTP/1.1",
    f"POST {PATH} HTTP/1.1 ",
    f"POST {PATH}\tHTTP/1.1",
]
VALUES = st.one_of(
    st.sampled_from(["2", "02", "+2", "2 ", " 2", "2,2", "0x2", "", "keep-alive", "close", "chunked", "gateway"]),
    st.text(st.characters(codec="latin-1"), max_size=12),
)


def _llhttp(data: bytes) -> tuple[Any, bytes] | None:
    """The first request aiohttp reads from `data` and its body, or None when it refuses it or
    has not got all of it."""

    async def read() -> tuple[Any, bytes] | None:
        loop = asyncio.get_running_loop()
        parser = http_parser.HttpRequestParser(BaseProtocol(loop), loop, 2**16, max_line_size=8190, max_field_size=8190)
        try:
            messages, _upgraded, _tail = parser.feed_data(data)
        except http_exceptions.HttpProcessingError:
            return None
        if not messages:
            return None
        message, payload = messages[0]
        if not payload.is_eof():
            return None
        return message, payload.read_nowait(-1)

    return asyncio.run(read())


def _request(line: str, headers: list[tuple[str, str]], sep: bytes, body: bytes) -> bytes:
    head = line.encode("latin-1") + sep
    head += b"".join(f"{name}:{value}".encode("latin-1") + sep for name, value in headers)
    return head + sep + body


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Mostly plain requests with a few bends each, so that many are taken and each bend is tried."""
    plain_line = f"POST {PATH} HTTP/1.1"
    line = plain_line if draw(st.integers(0, 3)) else draw(st.sampled_from(ODD_LINES))
    body = draw(st.sampled_from([b"{}", b'{"update_id":1}', b"", b"{}{}"]))
    headers = [("Host", " gateway"), ("Content-Length", f" {len(body)}")]
    harmless = st.tuples(st.sampled_from(["Accept", "X-Custom", "Content-Type", "X-Request-Id"]), VISIBLE)
    headers += draw(st.lists(harmless, max_size=3))
    if not draw(st.integers(0, 2)):
        headers += draw(st.lists(st.tuples(st.sampled_from(NAMES), VALUES), min_size=1, max_size=3))
    headers = draw(st.permutations(headers))
    if not draw(st.integers(0, 5)):
        headers = [h for h in headers if draw(st.booleans())]
    if not draw(st.integers(0, 10)):
        headers += [(f"X-N{i}", " 1") for i in range(draw(st.sampled_from([30, 31, 32, 127, 128, 129])))]
    headers = [(f" {n}" if not draw(st.integers(0, 20)) else n, v) for n, v in headers]
    sep = b"\n" if not draw(st.integers(0, 10)) else b"\r\n"
    return _request(line, headers, sep, body)


def _same_reading(data: bytes) -> bool:
    """Whether the fast path takes `data`; if it does, aiohttp must read it the same way."""
    taken = fastpath._split(data, [ROUTE])
    if not isinstance(taken, tuple):
        return False
    _route, request, size = taken
    theirs = _llhttp(data[:size])
    assert theirs is not None, f"the fast path took a request aiohttp refuses or reads longer: {data!r}"
    message, body = theirs
    assert (message.method, message.path, message.version) == ("POST", request.path, HttpVersion11)
    assert body == request.body
    for name, value in request.headers.items():
        assert message.headers.getall(name) == [value], (name, data)
    return True


@FUZZ
@given(requests())
def test_a_request_the_fast_path_takes_is_read_by_aiohttp_the_same_way(data: bytes) -> None:
    if _same_reading(data):
        event("taken")


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", " 2")],
        [("Host", " a"), ("Host", " b"), ("Content-Length", " 2")],
        [("Host", " a"), ("Content-Length", " 2"), ("Content-Length", " 2")],
        [("Host", " a"), ("Content-Length", " 2"), ("Transfer-Encoding", " chunked")],
        [("Host", " a"), ("Content-Length", " 2"), ("Content-Type", " a"), ("content-type", " a")],
        [("Host", " a"), ("Content-Length", " 2"), ("Sec-WebSocket-Key1", " a")],
        [("Host", " a"), ("Content-Length", " 2"), *[(f"X-N{i}", " 1") for i in range(129)]],
    ],
    ids=["no Host", "two Hosts", "two lengths", "chunked too", "two types", "old websocket", "129 headers"],
)
def test_a_request_aiohttp_refuses_or_reads_otherwise_is_not_taken(headers: list[tuple[str, str]]) -> None:
    data = _request(f"POST {PATH} HTTP/1.1", headers, b"\r\n", b"{}")
    assert fastpath._split(data, [ROUTE]) is None


@pytest.mark.parametrize(
    "data",
    [
        _request(f"POST {PATH} HTTP/1.1", [("Host", " gateway"), ("Content-Length", " 2")], b"\r\n", b"{}"),
        _request(
            f"POST {PATH} HTTP/1.1",
            [("host", "gateway"), ("content-length", "2"), ("X-Request-Id", " abc \t")],
            b"\r\n",
            b"{}",
        ),
    ],
)
def test_a_plain_request_is_taken_and_read_alike(data: bytes) -> None:
    assert _same_reading(data)


@pytest.mark.parametrize(("extra", "taken"), [(0, True), (1, False)], ids=["head at the limit", "one byte over"])
def test_a_head_over_max_head_is_left_to_aiohttp(extra: int, taken: bool) -> None:
    def padded(pad: str) -> bytes:
        headers = [("Host", " a"), ("Content-Length", " 2"), ("X-Pad", f" {pad}")]
        return _request(f"POST {PATH} HTTP/1.1", headers, b"\r\n", b"{}")

    head = padded("").index(b"\r\n\r\n")
    data = padded("p" * (fastpath.MAX_HEAD - head + extra))
    assert data.index(b"\r\n\r\n") == fastpath.MAX_HEAD + extra
    assert _same_reading(data) is taken
