"""Volume and time: a body over its endpoint's limit is refused with 413 while it is still
coming in (never read whole), and a client that sends its request head or body too slowly is
cut off instead of holding a handler."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from channels.telegram.inputs import MAX_UPLOAD
from foundation import http, listener
from gateway.app import create_app
from tests.hostile import rawhttp
from tests.hostile.world import World
from tests.support import telegram as tgs
from tests.support.anthropic import stream
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import make_settings, random_public_key, wipe
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import SECRET, TgGateway, tg_settings

JSON = {"Content-Type": "application/json"}
BOUNDARY = "hostile-boundary-7MA4YWxkTrZu0gW"
MULTIPART_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="chat_id"\r\n\r\n111000111\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="document"; filename="big.bin"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
).encode()


def address(client: TestClient[Any, Any]) -> tuple[str, int]:
    assert client.port is not None
    return client.host, client.port


def limits(world: World) -> list[tuple[str, dict[str, str], int, bytes]]:
    """(path, headers, the endpoint's limit, what the body starts with) for every body-reading endpoint."""
    alice = world.alice.auth
    push = {"Authorization": f"Bearer {world.google.push_token()}", **JSON}
    return [
        (f"/telegram/webhook/{tgs.BOT_ID}", {"X-Telegram-Bot-Api-Secret-Token": SECRET, **JSON}, 1 << 20, b""),
        ("/gmail/push", push, 64 << 10, b""),
        ("/outlook/notify", JSON, 1 << 20, b""),
        ("/outlook/lifecycle", JSON, 1 << 20, b""),
        ("/v1/telegram/sendMessage", {**alice, **JSON}, 1 << 20, b""),
        ("/v1/telegram/sendMessage", {**alice, "Content-Type": "application/x-www-form-urlencoded"}, 1 << 20, b""),
        (
            "/v1/telegram/sendDocument",
            {**alice, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            MAX_UPLOAD,
            MULTIPART_HEAD,
        ),
        ("/v1/connections/google/token", {**alice, **JSON}, 4096, b""),
        ("/v1/ai/messages", {**alice, **JSON}, 32 << 20, b""),
    ]


@pytest.mark.asyncio(loop_scope="package")
async def test_a_body_over_the_limit_is_refused_while_it_is_still_coming(world: World):
    host, port = address(world.client)
    before = await world.effects()
    for path, headers, limit, prefix in limits(world):
        upload = await rawhttp.endless_upload(host, port, path, headers, prefix=prefix)
        assert upload.answer.status == 413, (path, upload.answer.status, upload.answer.body)
        assert orjson.loads(upload.answer.body)["error"] == "payload_too_large", path
        # Refused soon after the limit was passed: never read to the end (256 MiB were planned).
        assert limit < upload.sent + len(prefix) + (1 << 16) and upload.sent < limit + (8 << 20), (path, upload.sent)
    assert await world.effects() == before


@pytest.mark.asyncio(loop_scope="package")
async def test_a_declared_length_over_the_limit_is_refused_before_any_body(world: World):
    answers = {}
    for path, headers, _limit, _prefix in limits(world):
        reader, writer = await asyncio.open_connection(*address(world.client))
        try:
            writer.write(request_head(path, {**headers, "Content-Length": 1 << 40}))
            answers[path, headers["Content-Type"]] = (await asyncio.wait_for(rawhttp.read_answer(reader), 10.0)).status
        except TimeoutError:
            answers[path, headers["Content-Type"]] = 0
        finally:
            writer.close()
    assert set(answers.values()) == {413}, answers


@pytest.mark.asyncio(loop_scope="package")
async def test_without_the_webhook_secret_not_even_an_endless_body_is_read(world: World):
    host, port = address(world.client)
    before = await world.effects()
    for path, headers in (
        (f"/telegram/webhook/{tgs.BOT_ID}", {"X-Telegram-Bot-Api-Secret-Token": "wrong", **JSON}),
        ("/gmail/push", {"Authorization": "Bearer not.a.jwt", **JSON}),
        ("/v1/ai/messages", {"Authorization": "Bearer ast.alice.forged", **JSON}),
    ):
        upload = await rawhttp.endless_upload(host, port, path, headers)
        assert upload.answer.status == 401, (path, upload.answer.status)
        assert upload.sent < 8 << 20, (path, upload.sent)
    assert await world.effects() == before


# -- slow clients ------------------------------------------------------------------------------

SLOW = 1.0
"""The server's idle and body timeouts in these tests (the real ones are listener.IDLE_TIMEOUT and
http.BODY_TIMEOUT); every trickle below would take a minute or more to finish."""


@pytest_asyncio.fixture
async def slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TgGateway, str]]:
    """A gateway run with aiohttp's server options `ally-gateway serve` uses, timeouts shortened;
    and a server token."""
    monkeypatch.setattr(listener, "IDLE_TIMEOUT", SLOW)
    monkeypatch.setattr(http, "BODY_TIMEOUT", SLOW)
    fake = FakeTelegram()
    await fake.start()
    settings = tg_settings(tmp_path, fake)
    server = TestServer(create_app(settings), port=0)
    await server.start_server(**listener.server_options())
    client = TestClient(server)
    gw = TgGateway(client, settings, fake)
    try:
        resp = await gw.admin(
            "PUT",
            "/admin/v1/users/slowpoke",
            json={"server_url": "http://127.0.0.1:9/ally", "server_public_key": random_public_key()},
        )
        yield gw, (await resp.json())["server_token"]
    finally:
        await client.close()
        await wipe(settings.key_prefix)
        await fake.close()


def request_head(path: str, headers: dict[str, Any]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_connection_that_never_sends_a_request_is_closed(slow: tuple[TgGateway, str]):
    gw, _token = slow
    reader, writer = await asyncio.open_connection(*address(gw.client))
    try:
        assert await asyncio.wait_for(reader.read(), 15.0) == b""
    finally:
        writer.close()


Serve = Callable[[float], Awaitable[tuple[str, int]]]


@pytest_asyncio.fixture
async def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Serve]:
    """Start a gateway listening as `ally-gateway serve` does, with the request-head deadline
    shortened (the idle timeout stays listener.IDLE_TIMEOUT, 75 s); answer its address."""
    settings = make_settings(tmp_path)
    runners: list[web.AppRunner] = []

    async def start(header_timeout: float) -> tuple[str, int]:
        monkeypatch.setattr(listener, "HEADER_TIMEOUT", header_timeout)
        runner = listener.runner(create_app(settings))
        runners.append(runner)
        await runner.setup()
        await listener.Site(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return str(host), int(port)

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()
        await wipe(settings.key_prefix)


HEAD = 2.0
"""The request-head deadline in these tests (the real one is listener.HEADER_TIMEOUT, 15 s)."""
TRICKLED_HEAD = request_head("/healthz", {"X-Padding": "p" * 600})
"""A head that takes five minutes at one byte every half second."""


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> rawhttp.RawAnswer:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
    return await asyncio.wait_for(rawhttp.read_answer(reader), 10.0)


async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off(serve: Serve):
    host, port = await serve(HEAD)
    received, elapsed, given = await rawhttp.trickle(host, port, TRICKLED_HEAD, every=0.5, limit=60.0)
    assert given < len(TRICKLED_HEAD), "the whole head got through"
    # Closed without an answer, by the head deadline: the idle timeout (75 s) is far off.
    assert received == b"" and elapsed < 30.0, (elapsed, received)


async def test_a_new_connection_that_sends_nothing_is_closed_at_the_head_deadline(serve: Serve):
    reader, writer = await asyncio.open_connection(*await serve(HEAD))
    try:
        assert await asyncio.wait_for(reader.read(), 30.0) == b""
    finally:
        writer.close()


async def test_slow_heads_do_not_keep_other_clients_waiting(serve: Serve):
    host, port = await serve(5.0)
    tricklers = [
        asyncio.create_task(rawhttp.trickle(host, port, TRICKLED_HEAD, every=0.5, limit=60.0)) for _ in range(20)
    ]
    await asyncio.sleep(1.0)  # each has sent a byte or two of its head
    reader, writer = await asyncio.open_connection(host, port)
    try:
        answer = await get(reader, writer, "/healthz")
    finally:
        writer.close()
    assert answer.status == 200
    assert not any(t.done() for t in tricklers), "answered only once the slow clients were gone"
    for received, elapsed, given in await asyncio.gather(*tricklers):
        assert given < len(TRICKLED_HEAD) and received == b"" and elapsed < 30.0, (given, received, elapsed)


async def test_a_keep_alive_connection_may_idle_longer_than_the_head_deadline(serve: Serve):
    reader, writer = await asyncio.open_connection(*await serve(HEAD))
    try:
        assert (await get(reader, writer, "/healthz")).status == 200
        await asyncio.sleep(2.5 * HEAD)  # idle, not sending a head: the idle timeout (75 s) applies
        assert (await get(reader, writer, "/healthz")).status == 200
        # A later head that trickles is cut off like the first one would be.
        writer.write(b"GET /hea")
        assert await asyncio.wait_for(reader.read(), 30.0) == b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        (f"/telegram/webhook/{tgs.BOT_ID}", "application/json", b'{"update_id": 1, "message": {}}' + b" " * 900),
        ("/v1/telegram/sendMessage", "application/json", b'{"text": "slow"}' + b" " * 900),
        ("/v1/telegram/sendMessage", "application/x-www-form-urlencoded", b"text=" + b"s" * 900),
        (
            "/v1/telegram/sendDocument",
            f"multipart/form-data; boundary={BOUNDARY}",
            MULTIPART_HEAD + b"d" * 900 + f"\r\n--{BOUNDARY}--\r\n".encode(),
        ),
    ],
)
async def test_a_body_sent_a_byte_at_a_time_gets_408_and_frees_the_handler(
    slow: tuple[TgGateway, str], path: str, content_type: str, body: bytes
):
    gw, token = slow
    headers = {
        "Content-Type": content_type,
        "Content-Length": len(body),
        "Authorization": f"Bearer {token}",
        "X-Telegram-Bot-Api-Secret-Token": SECRET,
    }
    head = request_head(path, headers)
    reader, writer = await asyncio.open_connection(*address(gw.client))
    writer.write(head)
    received, elapsed, given = await _trickle_body(reader, writer, body)
    assert given < len(body), "the whole body got through"
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b'"error":"body_timeout"' in received
    assert elapsed < 20.0


async def _trickle_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
) -> tuple[bytes, float, int]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    answered = asyncio.create_task(reader.read(65536))
    given = 0
    try:
        for byte in body:
            if answered.done() or loop.time() - start > 20.0:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            given += 1
            await asyncio.sleep(0.05)
        received = await asyncio.wait_for(answered, 5.0)
        return received, loop.time() - start, given
    finally:
        answered.cancel()
        writer.close()


async def test_a_download_the_client_never_reads_is_cut_off(slow: tuple[TgGateway, str], dedicated: DedicatedServer):
    gw, _token = slow
    created = await gw.create_user(dedicated, "reader")
    await gw.link_private(dedicated, "reader", tgs.person(515000515, "Rita", "rita"))
    size = 48 << 20  # far more than the socket buffers on both sides hold
    document = gw.fake.add_file(os.urandom(size), "documents/big.bin")
    person = tgs.person(515000515, "Rita", "rita")
    resp = await gw.post_update(tgs.message(tgs.private_chat(person), person, document=document))
    assert resp.status == 200
    reader, writer = await asyncio.open_connection(*address(gw.client))
    try:
        writer.write(
            f"GET /v1/telegram/files/{document['file_id']} HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {created['server_token']}\r\n\r\n".encode()
        )
        await asyncio.sleep(SLOW * 6)  # reading nothing while the gateway's writes stall
        got = 0
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 10.0):
                got += len(chunk)
    finally:
        writer.close()
    assert 0 < got < size, "the gateway kept the download open for a client that did not read"


@pytest.mark.asyncio(loop_scope="package")
async def test_an_ai_stream_the_client_never_reads_is_cut_off(world: World, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(http, "BODY_TIMEOUT", SLOW)
    world.anthropic.plan("claude-bulky-stream", stream(tuple("x" * 4096 for _ in range(12_000))))
    ask = orjson.dumps(
        {
            "model": "claude-bulky-stream",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    reader, writer = await asyncio.open_connection(*address(world.client))
    try:
        head = request_head("/v1/ai/messages", {**world.alice.auth, **JSON, "Content-Length": len(ask)})
        writer.write(head + ask)
        await asyncio.sleep(SLOW * 6)  # reading nothing while the relay's writes stall
        received = bytearray()
        # Until the server hangs up, or the chunked body ends (the connection is kept alive then).
        with contextlib.suppress(ConnectionError, TimeoutError):
            while not received.endswith(b"\r\n0\r\n\r\n"):
                chunk = await asyncio.wait_for(reader.read(1 << 20), 10.0)
                if not chunk:
                    break
                received += chunk
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert b"message_stop" not in received, "the relay kept the stream open for a client that did not read"
