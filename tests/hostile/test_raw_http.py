"""Requests no HTTP client library would send: header values that are not UTF-8, malformed
request lines, smuggling attempts. Whatever the bytes, never a 5xx and never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile import rawhttp
from tests.hostile.checks import Answer, assert_sane
from tests.hostile.world import World, new_flow
from tests.support import telegram as tgs

pytestmark = pytest.mark.asyncio(loop_scope="package")
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ENDPOINTS = (
    ("POST", f"/telegram/webhook/{tgs.BOT_ID}"),
    ("POST", "/gmail/push"),
    ("POST", "/outlook/notify"),
    ("POST", "/v1/ping"),
    ("POST", "/v1/telegram/sendMessage"),
    ("GET", "/v1/telegram/files/BQACAgIAAxkBAAI"),
    ("GET", "/v1/connections"),
    ("POST", "/v1/connections/google/token"),
    ("POST", "/v1/ai/messages"),
    ("GET", "/admin/v1/users/alice"),
    ("GET", "/oauth/callback/google?state=" + "s" * 43),
    ("GET", "/healthz"),
)
HEADERS = (
    "Authorization",
    "X-Telegram-Bot-Api-Secret-Token",
    "Cookie",
    "X-Request-Id",
    "Content-Type",
    "anthropic-beta",
    "Accept",
)
# Any byte but the line breaks that end a header.
header_bytes = st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"") or b"\xff")


async def exchange(world: World, request: bytes) -> Answer | None:
    """Send raw bytes; the answer, or None when the server closed the connection without one."""
    assert world.client.port is not None
    reader, writer = await asyncio.open_connection(world.client.host, world.client.port)
    try:
        writer.write(request)
        await writer.drain()
        try:
            raw = await asyncio.wait_for(rawhttp.read_answer(reader), 10.0)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        headers = {}
        for line in raw.head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
        return Answer(raw.status, headers, raw.body)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), values=st.dictionaries(st.sampled_from(HEADERS), header_bytes, min_size=1))
async def test_header_bytes_that_are_not_utf8_are_refused_never_a_500(
    world: World, endpoint: tuple[str, str], values: dict[str, bytes]
):
    method, path = endpoint
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: gateway", b"Content-Length: 2"]
    if "Authorization" in values:
        values["Authorization"] = b"Bearer " + values["Authorization"]
    lines += [name.encode() + b": " + value for name, value in values.items()]
    before = await world.effects()
    answer = await exchange(world, b"\r\n".join(lines) + b"\r\n\r\n{}")
    if answer is not None:
        assert_sane(answer, world.secrets)
    assert await world.effects() == before


MALFORMED = (
    b"GET /v1/connections HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe9\xff\r\n\r\n",
    b"POST /v1/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /outlook/notify HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nPOST /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /outlook/notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST /outlook/notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /outlook/notify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n{}\r\n0\r\n\r\n",
    b"POST /outlook/notify HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    b"POST /outlook/notify HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
    b"GET /v1/telegram/files/\xe9\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /oauth/callback/google?state=\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /healthz\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello on the plain port
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded: continuation\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: \x00\x01\r\n\r\n",
)


async def test_malformed_requests_get_a_4xx_or_a_closed_connection(world: World):
    before = await world.effects()
    for request in MALFORMED:
        answer = await exchange(world, request)
        if answer is not None:
            assert_sane(answer, world.secrets)
    assert await world.effects() == before


async def test_a_request_with_both_a_length_and_chunked_encoding_is_refused_whole(world: World):
    # The classic smuggling shape: whichever framing a proxy in front picked, the gateway refuses
    # the request instead of reading the second one out of its body.
    answer = await exchange(world, MALFORMED[2])
    assert answer is not None and answer.status == 400


async def test_a_binding_cookie_that_is_not_utf8_is_bad_state_not_a_500(world: World):
    state, name, _value = await new_flow(world)
    head = f"GET /oauth/callback/google?state={state}&code=abc HTTP/1.1\r\nHost: gateway\r\nCookie: {name}="
    answer = await exchange(world, head.encode() + b"\xe9\xff\xfe\r\n\r\n")
    assert answer is not None
    assert answer.status == 302, answer
    assert parse_qs(urlsplit(answer.headers["location"]).query)["reason"] == ["bad_state"]
