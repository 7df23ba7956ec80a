"""The webhook's fast path (`foundation.fastpath`) against aiohttp's route, on the real listener.

Every request below is sent twice, byte for byte: on a fresh connection, where the fast path
sees it first, and on a connection that a `GET /healthz` already gave to aiohttp. Both answers
must be the same, and only the plain requests may have been served by the fast path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from channels.telegram import ingress
from foundation import fastpath, listener
from gateway.app import create_app
from tests.hostile import rawhttp
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import register_user, wipe
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import SECRET, tg_settings

WEBHOOK = f"/telegram/webhook/{tgs.BOT_ID}"
HEAD = 2.0
"""The request-head deadline here (the real one is listener.HEADER_TIMEOUT, 15 s)."""
ALICE = tgs.person(7001, "Alice", "alice")


@dataclass
class Listening:
    host: str
    port: int
    runner: web.AppRunner
    served_fast: list[int]
    """The status of every answer the fast path wrote."""

    async def exchange(self, data: bytes, *, answers: int = 1, aiohttp_first: bool = False) -> list[rawhttp.RawAnswer]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            if aiohttp_first:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
                assert (await asyncio.wait_for(rawhttp.read_answer(reader), 10)).status == 200
            writer.write(data)
            return [await asyncio.wait_for(rawhttp.read_answer(reader), 10) for _ in range(answers)]
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest_asyncio.fixture
async def gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dedicated: DedicatedServer
) -> AsyncIterator[Listening]:
    """A gateway with the Telegram channel, listening as `ally-gateway serve` does, with a user
    whose private chat with Alice is linked."""
    fake = FakeTelegram()
    await fake.start()
    settings = tg_settings(tmp_path, fake)
    served: list[int] = []
    answer = fastpath._answer

    def counted(status: int, body: bytes, rid: str, extra: bytes) -> bytes:
        served.append(status)
        return answer(status, body, rid, extra)

    monkeypatch.setattr(fastpath, "_answer", counted)
    monkeypatch.setattr(listener, "HEADER_TIMEOUT", HEAD)
    runner = listener.runner(create_app(settings))
    await runner.setup()
    await listener.Site(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await register_user(http, dedicated, "alice", base=base, admin_token=settings.admin_token)
            headers = {"Authorization": f"Bearer {settings.admin_token}"}
            async with http.post(f"{base}/admin/v1/users/alice/telegram/link", headers=headers) as resp:
                code = (await resp.json())["code"]
        listening = Listening(str(host), int(port), runner, served)
        start = tgs.start(tgs.private_chat(ALICE), ALICE, code)
        assert (await listening.exchange(post(start)))[0].status == 200
        await dedicated.wait_for(lambda: any(e["type"] == "telegram.linked" for e in dedicated.events("alice")))
        served.clear()
        yield listening
    finally:
        await runner.cleanup()
        await wipe(settings.key_prefix)
        await fake.close()


def post(
    update: Any, *, headers: dict[str, Any] | None = None, body: bytes | None = None, path: str = WEBHOOK
) -> bytes:
    content = orjson.dumps(update) if body is None else body
    fields = {
        "Host": "gateway",
        "Content-Type": "application/json",
        "X-Telegram-Bot-Api-Secret-Token": SECRET,
        "Content-Length": str(len(content)),
        **(headers or {}),
    }
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items() if v is not None)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


def texts(dedicated: DedicatedServer) -> list[str]:
    return [e["payload"]["message"]["text"] for e in dedicated.events("alice") if e["type"] == "telegram.update"]


def hello(n: str) -> dict[str, Any]:
    return tgs.text(tgs.private_chat(ALICE), ALICE, n)


async def test_a_plain_webhook_is_served_fast_answered_as_aiohttp_answers_and_delivered(
    gateway: Listening, dedicated: DedicatedServer
):
    fast = (await gateway.exchange(post(hello("one"), headers={"X-Request-Id": "trace-42"})))[0]
    assert gateway.served_fast == [200]
    slow = (await gateway.exchange(post(hello("two"), headers={"X-Request-Id": "trace-43"}), aiohttp_first=True))[0]
    assert gateway.served_fast == [200], "after a request to another route, the connection is aiohttp's"
    assert (fast.status, fast.json()) == (slow.status, slow.json()) == (200, {"ok": True})
    assert b"X-Request-Id: trace-42\r\n" in fast.head
    assert b"Content-Type: application/json" in fast.head
    await dedicated.wait_for(lambda: texts(dedicated) == ["one", "two"])


NO_SECRET: dict[str, Any] = {"X-Telegram-Bot-Api-Secret-Token": None}
CHUNKED: dict[str, Any] = {"Content-Length": None, "Transfer-Encoding": "chunked"}
# Each case: a name, then the request's bytes. The fast path takes only the first two.
CASES: list[tuple[str, bytes]] = [
    ("plain", post(hello("plain"))),
    ("not an update", post({"update_id": "x"})),
    ("wrong secret", post(hello("s"), headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"})),
    ("no secret", post(hello("s"), headers=NO_SECRET)),
    ("secret twice", post(hello("s"), headers={"x-telegram-bot-api-secret-token": SECRET})),
    ("another bot", post(hello("b"), path="/telegram/webhook/999")),
    ("not JSON", post(None, body=b"{not json")),
    ("blank body", post(None, body=b"   ")),
    ("a JSON array", post(None, body=b"[1, 2]")),
    ("over the limit", post(hello("big"), headers={"Content-Length": str(ingress.MAX_UPDATE + 1)})),
    ("two lengths", post(hello("l"), headers={"Content-Length": "10", "content-length": "10"})),
    ("chunked", post(None, body=b"2\r\n{}\r\n0\r\n\r\n", headers=CHUNKED)),
    ("compressed", post(hello("z"), headers={"Content-Encoding": "gzip"})),
    ("query", post(hello("q"), path=WEBHOOK + "?a=1")),
    ("escaped", post(hello("e"), path=WEBHOOK.replace("webhook", "web%68ook"))),
    ("closing", post(hello("c"), headers={"Connection": "close"})),
    ("HTTP/1.0", post(hello("h")).replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
    ("bare LF", post(hello("n")).replace(b"\r\n", b"\n")),
    ("folded header", post(hello("f"), headers={"X-Note": "a\r\n b"})),
    ("non-ASCII header", post(hello("u"), headers={"X-Note": "caf\u00e9"})),
]  # fmt: skip


@pytest.mark.parametrize(("name", "request_bytes"), CASES, ids=[name for name, _ in CASES])
async def test_every_request_gets_the_answer_aiohttp_gives_and_only_plain_ones_go_fast(
    gateway: Listening, dedicated: DedicatedServer, name: str, request_bytes: bytes
):
    data = request_bytes.replace(b"caf\xc3\xa9", b"caf\xe9")
    slow = (await gateway.exchange(data, aiohttp_first=True))[0]
    fast = (await gateway.exchange(data))[0]
    assert (fast.status, fast.body) == (slow.status, slow.body), name
    taken = name in ("plain", "not an update")
    assert len(gateway.served_fast) == (1 if taken else 0), name
    if name == "plain":
        # The same update_id twice: queued once, answered 200 both times.
        await dedicated.wait_for(lambda: texts(dedicated) == ["plain"])


async def test_pipelined_requests_are_answered_in_order_and_another_route_goes_to_aiohttp(
    gateway: Listening, dedicated: DedicatedServer
):
    data = post(hello("p1")) + post(hello("p2")) + b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n" + post(hello("p3"))
    answers = await gateway.exchange(data, answers=4)
    assert [a.status for a in answers] == [200, 200, 200, 200]
    assert [a.json() for a in answers[:2]] == [{"ok": True}] * 2
    assert answers[2].json() == {"status": "ok"}
    assert gateway.served_fast == [200, 200], "p3 came after the GET: aiohttp's"
    await dedicated.wait_for(lambda: texts(dedicated) == ["p1", "p2", "p3"])


async def test_a_head_in_pieces_waits_for_the_rest_and_a_late_body_goes_to_aiohttp(
    gateway: Listening, dedicated: DedicatedServer
):
    for update, cut in ((hello("head"), 30), (hello("body"), -5)):
        data = post(update)
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        try:
            writer.write(data[:cut])
            await asyncio.sleep(0.2)
            writer.write(data[cut:])
            answer = await asyncio.wait_for(rawhttp.read_answer(reader), 10)
            assert (answer.status, answer.json()) == (200, {"ok": True})
        finally:
            writer.close()
    assert gateway.served_fast == [200], "the split head was taken; the body that came late was aiohttp's"
    await dedicated.wait_for(lambda: texts(dedicated) == ["head", "body"])


async def test_a_fast_connection_left_idle_is_closed_after_the_keep_alive_time(
    gateway: Listening, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(listener, "IDLE_TIMEOUT", 0.5)
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(post(hello("idle")))
        assert (await asyncio.wait_for(rawhttp.read_answer(reader), 10)).status == 200
        assert gateway.served_fast == [200]
        assert await asyncio.wait_for(reader.read(), 10) == b"", "closed by the server"
    finally:
        writer.close()


async def test_a_clean_stop_lets_a_request_in_hand_finish_and_answers_it(
    gateway: Listening, dedicated: DedicatedServer, monkeypatch: pytest.MonkeyPatch
):
    receive = ingress.receive
    started = asyncio.Event()

    async def slow_receive(channel: Any, data: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(0.5)
        await receive(channel, data)

    monkeypatch.setattr(ingress, "receive", slow_receive)
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(post(hello("last")))
        await asyncio.wait_for(started.wait(), 10)
        stopping = asyncio.create_task(gateway.runner.cleanup())
        answer = await asyncio.wait_for(rawhttp.read_answer(reader), 10)
        assert (answer.status, answer.json()) == (200, {"ok": True})
        await stopping
    finally:
        writer.close()
    assert gateway.served_fast == [200]
    await dedicated.wait_for(lambda: texts(dedicated) == ["last"])


async def test_a_webhook_head_sent_a_byte_at_a_time_is_cut_off_at_the_head_deadline(gateway: Listening):
    # The head could still become a plain webhook while it trickles in: the fast path waits for
    # it as aiohttp would, and the head deadline cuts it off.
    data = post(hello("slow"), headers={"X-Padding": "p" * 2000})
    received, elapsed, given = await rawhttp.trickle(gateway.host, gateway.port, data, every=0.01, limit=30.0)
    assert given < data.index(b"\r\n\r\n"), "the whole head got through"
    assert received == b"" and elapsed < 10.0, (elapsed, received)
    assert gateway.served_fast == []


@pytest.mark.parametrize("rest", [b"GET /healthz HTTP/1.1\r\nHost: gat", b"POST /telegram/webhook/"])
async def test_a_head_left_unfinished_behind_a_served_request_is_cut_at_the_head_deadline(
    gateway: Listening, rest: bytes
):
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(post(hello("before")) + rest)
        assert (await asyncio.wait_for(rawhttp.read_answer(reader), 10)).status == 200
        # Closed by the head deadline (2 s here), not left to the idle timeout (75 s).
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    assert gateway.served_fast == [200]


async def test_a_check_that_fails_leaves_the_request_to_aiohttp_which_answers_it(
    gateway: Listening, dedicated: DedicatedServer, monkeypatch: pytest.MonkeyPatch
):
    def broken(*_args: Any) -> Any:
        raise RuntimeError("a bug in the check")

    monkeypatch.setattr(ingress, "_received", broken)
    answer = (await gateway.exchange(post(hello("rescued"))))[0]
    assert (answer.status, answer.json()) == (200, {"ok": True})
    assert gateway.served_fast == []
    await dedicated.wait_for(lambda: texts(dedicated) == ["rescued"])
