"""What a provider sends and the gateway does not queue is acknowledged and counted: repeated
updates (reason `duplicate`) and updates past the user's queue cap (reason `queue_full`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.metrics import scrape, value
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import TgGateway, serve_tg, tg_settings, updates

ALICE = tgs.person(111000333, "Alice", "alice")
BOB = tgs.person(222000444, "Bob", "bob")
DUPLICATE = 'ally_inbound_dropped_total{channel="telegram",reason="duplicate"}'
FULL = 'ally_inbound_dropped_total{channel="telegram",reason="queue_full"}'


@pytest.fixture
async def small(tmp_path: Path, fake_tg: FakeTelegram) -> AsyncIterator[TgGateway]:
    async for gateway in serve_tg(tg_settings(tmp_path, fake_tg, queue_max_events=2), fake_tg):
        yield gateway


async def test_a_repeated_update_id_is_counted_and_logged_without_its_content(
    tg: TgGateway, dedicated: DedicatedServer, caplog: pytest.LogCaptureFixture
):
    await tg.create_user(dedicated, "d1")
    await tg.link_private(dedicated, "d1", ALICE)
    before = await scrape(tg)
    update = tgs.text(tgs.private_chat(ALICE), ALICE, "secret words")
    with caplog.at_level(logging.DEBUG, logger="routing.handoff"):
        for _ in range(3):
            assert (await tg.post_update(update)).status == 200
    assert value(await scrape(tg), DUPLICATE) - value(before, DUPLICATE) == 2
    logged = [r for r in caplog.records if r.name == "routing.handoff" and r.getMessage() == "duplicate dropped"]
    assert len(logged) == 2 and all(getattr(r, "channel", None) == "telegram" for r in logged)
    assert "secret words" not in caplog.text and str(update["update_id"]) not in caplog.text


async def test_updates_past_the_cap_are_acknowledged_dropped_and_reported_once(
    small: TgGateway, dedicated: DedicatedServer
):
    capped = await small.create_user(dedicated, "capped")
    await small.create_user(dedicated, "fine")
    await small.link_private(dedicated, "capped", ALICE)
    await small.link_private(dedicated, "fine", BOB)
    dedicated.mode["capped"] = "down"
    before = await scrape(small)
    sent = [tgs.text(tgs.private_chat(ALICE), ALICE, f"m{n}") for n in range(5)]
    for update in sent:
        # Telegram gets its 200 for every one: a 5xx would stall the bot for every user.
        assert (await small.post_update(update)).status == 200
    other = tgs.text(tgs.private_chat(BOB), BOB, "still flowing")
    assert (await small.post_update(other)).status == 200
    await dedicated.wait_for(lambda: updates(dedicated, "fine") == [other])
    assert value(await scrape(small), FULL) - value(before, FULL) == 3

    dedicated.mode["capped"] = "ok"
    ping = await small.client.post("/v1/ping", headers=small.server_headers(capped["server_token"]))
    assert ping.status == 200
    await dedicated.wait_for(lambda: any(e["type"] == "gateway.overflow" for e in dedicated.events("capped")))
    assert updates(dedicated, "capped") == sent[:2]
    [overflow] = [e for e in dedicated.events("capped") if e["type"] == "gateway.overflow"]
    assert overflow["payload"]["dropped"] == 3
