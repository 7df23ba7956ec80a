"""The example dedicated server, run as a real process, receives, verifies and opens real deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from foundation.types import Event
from gateway.app import create_app
from routing import signing
from routing.handoff import Item
from routing.sealing import unb64url
from tests.support.example import EXAMPLES, ExampleProcess, example_server, print_key, stop
from tests.support.gateway import Gateway, make_settings, wipe
from tests.support.ports import free_port

STANDIN = EXAMPLES / "telegram_standin.py"
pytestmark = pytest.mark.slow


def update(marker: str, update_id: int) -> Item:
    payload = {
        "update_id": update_id,
        "message": {
            "message_id": 7,
            "date": 1795773600,
            "chat": {"id": 4242, "type": "private", "first_name": "Alice"},
            "from": {"id": 4242, "is_bot": False, "first_name": "Alice"},
            "text": marker,
        },
    }
    return Item(Event("telegram.update", "telegram", payload), dedup=str(update_id))


async def register(gateway: Gateway, user_id: str, server_url: str, public_key: str, status: int) -> dict[str, str]:
    resp = await gateway.admin(
        "PUT", f"/admin/v1/users/{user_id}", json={"server_url": server_url, "server_public_key": public_key}
    )
    assert resp.status == status, await resp.text()
    body: dict[str, str] = await resp.json()
    return body


async def test_example_server_opens_a_delivered_event_and_the_gateway_sees_it_acknowledged(
    gateway: Gateway, tmp_path: Path
):
    key_file = tmp_path / "server.key"
    public_key = await print_key(key_file)
    assert public_key == await print_key(key_file), "the key is made once, then loaded"
    # The secret exists only once the user is registered, and the port only once the server runs:
    # register first, start the server, then point the user at it (an update, answered 200).
    created = await register(gateway, "demo", "http://127.0.0.1:9", public_key, 201)
    gateway_url = str(gateway.client.make_url("")).rstrip("/")
    async with example_server(
        key_file,
        "demo",
        created["webhook_secret"],
        ALLY_GATEWAY_URL=gateway_url,
        ALLY_SERVER_TOKEN=created["server_token"],
    ) as example:
        await example.wait_for(lambda out: "pinged the gateway: 0 event(s) pending" in out)
        await register(gateway, "demo", example.url(), public_key, 200)
        marker = f"marker-{uuid.uuid4().hex}"
        assert await gateway.services.handoff("demo", [update(marker, 1)], dedup_scope="tg") == 1
        await example.wait_for(lambda out: marker in out)
        assert "telegram.update evt_" in example.output
        assert "could not be opened" not in example.output
        status = await (await gateway.admin("GET", "/admin/v1/users/demo")).json()
        for _ in range(50):
            if status["counters"]["events_out"] == 1:
                break
            await asyncio.sleep(0.1)
            status = await (await gateway.admin("GET", "/admin/v1/users/demo")).json()
        assert status["counters"]["events_out"] == 1
        assert status["server"]["health"] == "ok"


async def test_example_server_refuses_a_bad_signature_and_accepts_both_secrets_during_rotation(
    gateway: Gateway, tmp_path: Path
):
    key_file = tmp_path / "server.key"
    public_key = await print_key(key_file)
    created = await register(gateway, "rot", "http://127.0.0.1:9", public_key, 201)
    async with example_server(key_file, "rot", created["webhook_secret"]) as example:
        await register(gateway, "rot", example.url(), public_key, 200)
        body = '{"txn_id":"txn_forged","events":[]}'
        forged = signing.headers(signing.new_secret(), "txn_forged", body)
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{example.url()}/ally/v1/transactions/txn_forged", data=body, headers=forged) as resp,
        ):
            assert resp.status == 401
        await example.wait_for(lambda out: "refused txn_forged" in out)
        # After a rotation the gateway signs with the new and the previous secret; the server,
        # still holding only the previous one, keeps accepting deliveries during the overlap.
        rotated = await (await gateway.admin("POST", "/admin/v1/users/rot/credentials/rotate")).json()
        assert rotated["webhook_secret"] != created["webhook_secret"]
        marker = f"rotated-{uuid.uuid4().hex}"
        await gateway.services.handoff("rot", [update(marker, 2)], dedup_scope="tg")
        await example.wait_for(lambda out: marker in out)


async def test_example_server_changes_keys_without_losing_a_held_event_and_then_retires_the_old_key(
    gateway: Gateway, tmp_path: Path
):
    key_file = tmp_path / "server.keys"
    old_key = await print_key(key_file, "--suite", "x25519")
    assert len(unb64url(old_key)) == 32
    created = await register(gateway, "mover", "http://127.0.0.1:9", old_key, 201)
    markers = [f"held-{n}-{uuid.uuid4().hex}" for n in range(6)]
    # Three events wait for a server that is down; then the server makes a hybrid key.
    await gateway.services.handoff("mover", [update(m, n) for n, m in enumerate(markers[:3])], dedup_scope="tg")
    new_key = await print_key(key_file, "--new-key", "--suite", "mlkem768-x25519")
    assert len(unb64url(new_key)) == 1216
    assert new_key == await print_key(key_file), "the new key is the current one"
    await register(gateway, "mover", "http://127.0.0.1:9", new_key, 200)
    await gateway.services.handoff("mover", [update(m, n + 3) for n, m in enumerate(markers[3:5])], dedup_scope="tg")
    sealing = (await (await gateway.admin("GET", "/admin/v1/users/mover")).json())["sealing"]
    assert (sealing["suite"], sealing["held_for_older_keys"]) == ("MLKEM768-X25519", 3)
    old_kid = sealing["older_keys"][0]["kid"]
    gateway_url = str(gateway.client.make_url("")).rstrip("/")
    async with example_server(
        key_file,
        "mover",
        created["webhook_secret"],
        ALLY_GATEWAY_URL=gateway_url,
        ALLY_SERVER_TOKEN=created["server_token"],
    ) as example:
        await register(gateway, "mover", example.url(), new_key, 200)
        await gateway.services.handoff.schedule("mover", now=True)
        await example.wait_for(lambda out: all(m in out for m in markers[:5]))
        assert "could not be opened" not in example.output
        positions = [example.output.index(m) for m in markers[:5]]
        assert positions == sorted(positions), "in the order they were accepted"
        assert f"retired key {old_kid}" not in example.output, "that transaction may still be sent again"
        # The next transaction proves the gateway saw the 200: the old key is dropped from disk.
        await gateway.services.handoff("mover", [update(markers[5], 5)], dedup_scope="tg")
        await example.wait_for(lambda out: markers[5] in out and f"retired key {old_kid}" in out)
    kept = json.loads(key_file.read_text())["keys"]
    assert [k["suite"] for k in kept] == ["mlkem768-x25519"]
    assert old_kid not in key_file.read_text()


@contextlib.asynccontextmanager
async def telegram_standin() -> AsyncIterator[ExampleProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(STANDIN),
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    standin = ExampleProcess(proc)
    pump = asyncio.create_task(standin.pump())
    try:
        await standin.wait_for(lambda out: "listening on " in out)
        yield standin
    finally:
        await stop(proc)
        await pump


@pytest.mark.parametrize("mode", ["webhook", "polling"])
async def test_walkthrough_a_message_typed_in_telegram_arrives_opened_at_the_example_server(tmp_path: Path, mode: str):
    """examples/README.md, run as written: stand-in, gateway, example server, link, say hello; and
    the README's laptop path, where the gateway fetches the chat's messages with getUpdates."""
    async with telegram_standin() as standin:
        port = free_port()
        settings = make_settings(
            tmp_path,
            public_url=f"http://127.0.0.1:{port}",
            telegram_bot_token="123456789:AAElocalexampletokenxxxxxxxxxxxxxxx",
            telegram_api_url=standin.url(),
            telegram_mode=mode,
        )
        client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=port))
        await client.start_server()
        try:
            gateway = Gateway(client, settings)
            if mode == "webhook":
                await standin.wait_for(
                    lambda out: f"webhook set: http://127.0.0.1:{port}/telegram/webhook/123456789" in out
                )
            key_file = tmp_path / "server.key"
            public_key = await print_key(key_file)
            created = await register(gateway, "demo", "http://127.0.0.1:9", public_key, 201)
            gateway_env = {"ALLY_GATEWAY_URL": f"http://127.0.0.1:{port}", "ALLY_SERVER_TOKEN": created["server_token"]}
            async with example_server(key_file, "demo", created["webhook_secret"], **gateway_env) as example:
                await example.wait_for(lambda out: "answering Telegram messages as @" in out)
                await register(gateway, "demo", example.url(), public_key, 200)
                link = await (await gateway.admin("POST", "/admin/v1/users/demo/telegram/link")).json()
                marker = f"hello-{uuid.uuid4().hex}"
                async with aiohttp.ClientSession() as session:
                    for text in (f"/start {link['code']}", marker):
                        async with session.post(f"{standin.url()}/_user/say", json={"text": text}) as resp:
                            assert resp.status == 200
                            answer = await resp.json()
                            assert answer.get("gateway_status", 200) == 200
                            assert ("queued_for" in answer) == (mode == "polling")
                await example.wait_for(lambda out: marker in out)
                linked, update = example.output.index("telegram.linked evt_"), example.output.index(marker)
                assert linked < update, "the link arrives before the first message"
                assert "telegram.update evt_" in example.output
                assert link["code"] not in example.output, "/start <code> itself is not forwarded"
                # The example answers through the gateway with python-telegram-bot: typing, then the echo.
                echoed = f"bot → chat 4242: You said: {marker}"
                await standin.wait_for(lambda out: echoed in out)
                typing = standin.output.index("bot → chat 4242: (typing…)")
                assert typing < standin.output.index(echoed)
        finally:
            await client.close()
            await wipe(settings.key_prefix)
