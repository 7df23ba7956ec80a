"""Replayed and stale signed requests. Ingress: a captured Telegram update, Pub/Sub push or Graph
notification sent again is acknowledged and not queued again; a push token past its expiry is
refused. Delivery: the example dedicated server refuses transactions whose Standard Webhooks
timestamp is more than five minutes off, and handles a replayed one only once."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from routing import signing
from tests.hostile.world import World
from tests.support import telegram as tgs
from tests.support.example import example_server, print_key
from tests.support.mail import connect_gmail


async def queued(world: World, user_id: str) -> int:
    raw = await world.tg.services.redis.hget(world.tg.services.keys.counters(user_id), "events_in")
    return int(raw or 0)


@pytest.mark.asyncio(loop_scope="package")
async def test_a_replayed_telegram_update_is_acknowledged_and_queued_once(world: World):
    update = tgs.text(tgs.private_chat(world.alice.person), world.alice.person, "replay me")
    before = await queued(world, "alice")
    for _ in range(3):
        assert (await world.tg.post_update(update)).status == 200
    assert await queued(world, "alice") == before + 1


@pytest.mark.asyncio(loop_scope="package")
async def test_a_replayed_or_stale_gmail_push_is_acknowledged_and_queued_once(world: World):
    address = await connect_gmail(world.tg, world.google, world.dedicated, "gina")
    token = world.google.push_token()
    history = world.google.change(address)
    push = world.google.push_body(address, history)
    headers = {"Authorization": f"Bearer {token}"}
    before = await queued(world, "gina")
    for _ in range(3):
        assert (await world.client.post("/gmail/push", json=push, headers=headers)).status == 204
    assert await queued(world, "gina") == before + 1
    # The same change under a new Pub/Sub message id: not above the last historyId, so not news.
    again = world.google.push_body(address, history)
    assert (await world.client.post("/gmail/push", json=again, headers=headers)).status == 204
    assert await queued(world, "gina") == before + 1
    # A captured token used after it expired: refused, whatever it carries.
    now = int(time.time())
    expired = world.google.push_token(iat=now - 3700, exp=now - 100)
    fresh = world.google.push_body(address, world.google.change(address))
    resp = await world.client.post("/gmail/push", json=fresh, headers={"Authorization": f"Bearer {expired}"})
    assert resp.status == 401
    assert await queued(world, "gina") == before + 1


@pytest.mark.asyncio(loop_scope="package")
async def test_a_replayed_graph_notification_is_acknowledged_and_queued_once(world: World):
    assert world.bob.subscription is not None
    item = world.graph.notification(world.bob.subscription)
    before = await queued(world, "bob")
    for _ in range(3):
        resp = await world.client.post("/outlook/notify", json={"value": [item]})
        assert resp.status == 202
    assert await queued(world, "bob") == before + 1


@pytest.mark.slow
async def test_the_example_server_refuses_stale_and_future_timestamps_and_handles_a_replay_once(tmp_path: Path):
    key_file = tmp_path / "server.key"
    await print_key(key_file)
    secret = signing.new_secret()
    body = orjson.dumps({"txn_id": "txn_replayed", "events": []}).decode()
    now = dt.datetime.now(dt.UTC)
    async with example_server(key_file, "replay", secret) as example, aiohttp.ClientSession() as session:
        url = f"{example.url()}/ally/v1/transactions/txn_replayed"

        async def put(stamp: dt.datetime) -> int:
            headers = {**signing.headers(secret, "txn_replayed", body, now=stamp), "Content-Type": "application/json"}
            async with session.put(url, data=body, headers=headers) as resp:
                return resp.status

        for off in (dt.timedelta(minutes=-6), dt.timedelta(minutes=6), dt.timedelta(days=-1)):
            assert await put(now + off) == 401, off
        assert "refused txn_replayed" in example.output
        assert "txn_replayed: 0 event(s)" not in example.output
        assert await put(now) == 200
        assert await put(now) == 200  # the very same request again: acknowledged, not handled again
        await example.wait_for(lambda out: "already handled" in out)
        assert example.output.count("txn_replayed: 0 event(s)") == 1
