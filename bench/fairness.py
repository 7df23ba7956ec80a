"""Benchmark 4 — outbound fairness under the bot-wide 30 messages/s limit.

One heavy user with many linked groups floods `POST /v1/telegram/sendMessage` (enough
concurrent calls to ask for far more than 30/s); meanwhile 50 light users each send one
message to their private chat. The Bot API is the project's own local stand-in
(`tests/support/telegram.py`, Telegram's wire format), which records when each
`sendMessage` reached it. A light user's latency is from its request leaving the server
to its `sendMessage` arriving at "Telegram". The baseline is the same 50 light messages
with nobody flooding, in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bench.common import Results, Row, log, median, percentile
from bench.fleet import Fleet, User, make_users
from tests.support.telegram import BOT_ID, TOKEN, FakeTelegram

SECRET = "bench-webhook-secret"
LIGHT = 50
GROUPS = 80
FLOOD_CONCURRENCY = 40
LIGHT_SPREAD = 2.5
WARMUP = 2.0
TARGET_P99_S = 2.0


async def run(results: Results, *, rounds: int) -> None:
    name = "fairness"
    telegram = FakeTelegram()
    await telegram.start()
    fleet = Fleet(
        gateway_env={
            "ALLY_TELEGRAM_BOT_TOKEN": TOKEN,
            "ALLY_TELEGRAM_API_URL": telegram.url,
            "ALLY_TELEGRAM_WEBHOOK_SECRET": SECRET,
        }
    )
    try:
        await fleet.start()
        heavy, *light = make_users(1 + LIGHT, prefix="tg")
        await fleet.register([heavy, *light])
        for user in (heavy, *light):
            await link_private(fleet, user)
        groups = [await add_group(fleet, heavy, g) for g in range(GROUPS)]
        quiet99, flood99, quiet50, flood50, bot_rates, refused = [], [], [], [], [], []
        for r in range(rounds):
            base = await light_round(fleet, telegram, light)
            flooded, stats = await flood_round(fleet, telegram, heavy, groups, light)
            log(
                f"round {r + 1}: light p50/p99 {percentile(base, 50):.2f}/{percentile(base, 99):.2f} s alone, "
                f"{percentile(flooded, 50):.2f}/{percentile(flooded, 99):.2f} s beside the flood; {stats}"
            )
            quiet50.append(percentile(base, 50))
            quiet99.append(percentile(base, 99))
            flood50.append(percentile(flooded, 50))
            flood99.append(percentile(flooded, 99))
            bot_rates.append(stats["bot_rate"])
            refused.append(stats["light_refused"])
        p99 = median(flood99)
        results.add(
            Row(
                name,
                f"light user's message sent, p99 ({LIGHT} users, one heavy user flooding)",
                p99,
                "s",
                median(quiet99),
                "same messages, no flood",
                f"≤ {TARGET_P99_S:.0f} s",
                p99 <= TARGET_P99_S and not any(refused),
                flood99,
            )
        )
        results.add(
            Row(
                name,
                "light user's message sent, p50",
                median(flood50),
                "s",
                median(quiet50),
                "same messages, no flood",
                rounds=flood50,
            )
        )
        results.add(
            Row(
                name,
                "bot-wide sendMessage rate during the flood",
                median(bot_rates),
                "/s",
                target="≤ 30/s",
                met=max(bot_rates) <= 31.0,
                rounds=bot_rates,
            )
        )
        if any(refused):
            results.note(name, f"light messages refused with 429: {refused} per round")
    finally:
        await fleet.stop()
        await telegram.close()


async def webhook(fleet: Fleet, update: dict[str, Any]) -> None:
    assert fleet.gateway is not None
    async with fleet.http.post(
        f"{fleet.gateway.url}/telegram/webhook/{BOT_ID}", json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    ) as resp:  # fmt: skip
        if resp.status != 200:
            raise RuntimeError(f"webhook: {resp.status} {await resp.text()}")


_next_update = int(time.time())


def _uid() -> int:
    global _next_update
    _next_update += 1
    return _next_update


def _person(user: User) -> dict[str, Any]:
    return {"id": user.chat_id, "is_bot": False, "first_name": "Dana", "language_code": "en"}


async def link_private(fleet: Fleet, user: User) -> None:
    """The real linking flow: an admin link code, then `/start <code>` from the user's private chat."""
    status, body = await fleet.admin("POST", f"/admin/v1/users/{user.user_id}/telegram/link")
    if status != 200:
        raise RuntimeError(f"link code: {status} {body}")
    text = f"/start {body['code']}"
    await webhook(fleet, {"update_id": _uid(), "message": {
        "message_id": 1, "from": _person(user), "date": int(time.time()), "text": text,
        "chat": {"id": user.chat_id, "first_name": "Dana", "type": "private"},
        "entities": [{"offset": 0, "length": 6, "type": "bot_command"}]}})  # fmt: skip


async def add_group(fleet: Fleet, user: User, index: int) -> int:
    """The user adds the bot to a group (`my_chat_member`), which then routes to that user."""
    chat_id = -1_001_000_000_000 - index
    bot = {"id": BOT_ID, "is_bot": True, "first_name": "Ally", "username": "ally_test_bot"}
    await webhook(fleet, {"update_id": _uid(), "my_chat_member": {
        "chat": {"id": chat_id, "title": f"Team {index}", "type": "supergroup"},
        "from": _person(user), "date": int(time.time()),
        "old_chat_member": {"user": bot, "status": "left"},
        "new_chat_member": {"user": bot, "status": "member"}}})  # fmt: skip
    return chat_id


async def send(fleet: Fleet, user: User, params: dict[str, Any]) -> int:
    assert fleet.gateway is not None
    async with fleet.http.post(
        f"{fleet.gateway.url}/v1/telegram/sendMessage", json=params,
        headers={"Authorization": f"Bearer {user.server_token}"},
    ) as resp:  # fmt: skip
        await resp.read()
        return resp.status


async def light_messages(fleet: Fleet, telegram: FakeTelegram, light: list[User]) -> tuple[list[float], int]:
    """Each light user sends one message, spread over LIGHT_SPREAD s; return seconds to reach Telegram."""
    started: dict[int, float] = {}
    marker = f"ping {time.monotonic_ns()}"

    async def one(i: int, user: User) -> int:
        await asyncio.sleep(i * LIGHT_SPREAD / len(light))
        started[user.chat_id] = time.monotonic()
        return await send(fleet, user, {"text": marker})

    statuses = await asyncio.gather(*(one(i, u) for i, u in enumerate(light)))
    arrived = {int(c.params["chat_id"]): c.at for c in telegram.sent() if c.params.get("text") == marker}
    return [arrived[c] - t for c, t in started.items() if c in arrived], sum(1 for s in statuses if s != 200)


async def light_round(fleet: Fleet, telegram: FakeTelegram, light: list[User]) -> list[float]:
    latencies, _refused = await light_messages(fleet, telegram, light)
    await asyncio.sleep(1.5)  # let every per-chat budget refill before the flooded round
    return latencies


async def flood_round(
    fleet: Fleet, telegram: FakeTelegram, heavy: User, groups: list[int], light: list[User]
) -> tuple[list[float], dict[str, Any]]:
    stop = asyncio.Event()
    statuses: list[int] = []

    async def flooder(k: int) -> None:
        n = k
        while not stop.is_set():
            statuses.append(await send(fleet, heavy, {"chat_id": groups[n % len(groups)], "text": "flood"}))
            n += FLOOD_CONCURRENCY

    before = len(telegram.sent())
    began = time.monotonic()
    tasks = [asyncio.create_task(flooder(k)) for k in range(FLOOD_CONCURRENCY)]
    await asyncio.sleep(WARMUP)
    latencies, refused = await light_messages(fleet, telegram, light)
    stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
    window = [c.at for c in telegram.sent()[before:] if began + WARMUP <= c.at <= began + WARMUP + LIGHT_SPREAD]
    stats = {
        "bot_rate": len(window) / LIGHT_SPREAD,
        "heavy_sent": sum(1 for s in statuses if s == 200),
        "heavy_429": sum(1 for s in statuses if s == 429),
        "light_refused": refused,
    }
    await asyncio.sleep(3.0)  # the heavy user's backlog drains before the next round
    return latencies, stats
