"""A Telegram 429 pauses what it was for, never every tenant (contract §9.4).

The attack: one tenant makes its own chat hit Telegram's limit (or Telegram answers it with a
huge `retry_after`); before, the whole shared bot stopped for everyone, for as long as Telegram said.
"""

from __future__ import annotations

import asyncio

from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.telegram_gateway import TgGateway, linked

ALICE = tgs.person(111000111, "Alice", "alice")
BOB = tgs.person(222000222, "Bob", "bob")
CAROL = tgs.person(333000333, "Carol", "carol")


async def test_a_429_for_one_tenants_chat_pauses_that_chat_and_no_one_else(tg: TgGateway, dedicated: DedicatedServer):
    auth_a = await linked(tg, dedicated, "ua", ALICE)
    auth_b = await linked(tg, dedicated, "ub", BOB)
    tg.fake.fail("sendMessage", 429, "Too Many Requests: retry after 30", retry_after=30)
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "a"}, headers=auth_a)
    assert resp.status == 429 and 25 <= int(resp.headers["Retry-After"]) <= 30
    body = await resp.json()
    assert body["error"] == "rate_limited" and body["error_code"] == 429 and body["parameters"]["retry_after"] >= 25
    # The other tenant's messages keep flowing at once.
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(3):
        resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": f"b{n}"}, headers=auth_b)
        assert resp.status == 200
    assert loop.time() - started < 5.0  # a bot-wide pause would have held them for 30 s
    # A's chat is paused, for every method, and nothing of it reaches Telegram meanwhile.
    sent_before = len(tg.fake.calls)
    for method, params in (("sendMessage", {"text": "again"}), ("sendChatAction", {"action": "typing"})):
        resp = await tg.client.post(f"/v1/telegram/{method}", json=params, headers=auth_a)
        assert resp.status == 429 and 20 <= int(resp.headers["Retry-After"]) <= 30
    assert len(tg.fake.calls) == sent_before


async def test_a_huge_retry_after_pauses_for_an_hour_at_most(tg: TgGateway, dedicated: DedicatedServer):
    auth = await linked(tg, dedicated, "ua", ALICE)
    tg.fake.fail("sendMessage", 429, "Too Many Requests: retry after 1000000", retry_after=1_000_000)
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "a"}, headers=auth)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) == 3600
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "b"}, headers=auth)
    assert resp.status == 429 and 3500 < int(resp.headers["Retry-After"]) <= 3600


async def test_429s_in_two_tenants_chats_pause_the_bot(tg: TgGateway, dedicated: DedicatedServer):
    auths = [await linked(tg, dedicated, u, p) for u, p in (("ua", ALICE), ("ub", BOB), ("uc", CAROL))]
    tg.fake.fail("sendMessage", 429, "Too Many Requests: retry after 20", retry_after=20, times=2)
    for auth in auths[:2]:
        resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "x"}, headers=auth)
        assert resp.status == 429
    # Telegram is limiting the bot as a whole: the third tenant waits too, nothing is sent.
    sent_before = len(tg.fake.calls)
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "c"}, headers=auths[2])
    assert resp.status == 429 and 10 <= int(resp.headers["Retry-After"]) <= 20
    assert len(tg.fake.calls) == sent_before


async def test_one_tenants_429s_in_many_chats_do_not_pause_the_bot(tg: TgGateway, dedicated: DedicatedServer):
    auth_a = await linked(tg, dedicated, "ua", ALICE)
    auth_b = await linked(tg, dedicated, "ub", BOB)
    groups = [tgs.group_chat(-4003330000 - n) for n in range(3)]
    for group in groups:
        assert (await tg.post_update(tgs.chat_member(group, ALICE, "left", "member"))).status == 200
    await dedicated.wait_for(lambda: len(dedicated.events("ua")) >= 4)
    tg.fake.fail("sendMessage", 429, "Too Many Requests: retry after 30", retry_after=30, times=3)
    for group in groups:
        body = {"chat_id": group["id"], "text": "flood"}
        assert (await tg.client.post("/v1/telegram/sendMessage", json=body, headers=auth_a)).status == 429
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "b"}, headers=auth_b)
    assert resp.status == 200


async def test_every_method_counts_against_the_chats_budget(tg: TgGateway, dedicated: DedicatedServer):
    auth = await linked(tg, dedicated, "ua", ALICE)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # A burst of three, then one a second: chat actions are not free (five take two seconds).
    for _ in range(5):
        resp = await tg.client.post("/v1/telegram/sendChatAction", json={"action": "typing"}, headers=auth)
        assert resp.status == 200
    assert loop.time() - started >= 1.9
