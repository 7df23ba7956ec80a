"""Long polling across real processes: one poller at a time, and a poller killed with SIGKILL in
the middle of a batch loses nothing and delivers nothing twice (contract §9.4)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from foundation.config import Settings
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import ADMIN_TOKEN, REDIS_URL, register_user, wipe
from tests.support.subprocess_gateway import GatewayProcess, environment
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import SECRET, tg_settings, updates
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ALICE = tgs.person(111000111, "Alice", "alice")
BOB = tgs.person(222000222, "Bob", "bob")
LEASE = 2.0
STARTED = "telegram poller started in this process"


@dataclasses.dataclass
class Pollers:
    procs: list[GatewayProcess]
    settings: Settings
    fake: FakeTelegram
    dedicated: DedicatedServer
    redis: Redis

    def holders(self) -> list[GatewayProcess]:
        return [p for p in self.procs if p.log_path.exists() and STARTED in p.log_path.read_text()]

    async def link(self, user_id: str, person: dict[str, Any]) -> None:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        url = self.procs[0].url
        async with aiohttp.ClientSession() as http:
            await register_user(http, self.dedicated, user_id, base=url)
            async with http.post(f"{url}/admin/v1/users/{user_id}/telegram/link", headers=admin) as resp:
                code = (await resp.json())["code"]
        self.fake.push(tgs.start(tgs.private_chat(person), person, code))
        await self.dedicated.wait_for(lambda: bool(self.dedicated.events(user_id)), timeout=20)

    async def queued(self, *users: str) -> int:
        keys = self.settings.key_prefix
        counts = [await self.redis.hget(f"{keys}{{u:{u}}}:counters", "events_in") for u in users]
        return sum(int(c or 0) for c in counts)


async def _at_least(pollers: Pollers, count: int) -> bool:
    return await pollers.queued("u1", "u2") >= count


@pytest.fixture
async def pollers(tmp_path: Path, fake_tg: FakeTelegram, dedicated: DedicatedServer) -> AsyncIterator[Pollers]:
    settings = tg_settings(tmp_path, fake_tg)
    env = environment(
        settings,
        ALLY_TELEGRAM_BOT_TOKEN=fake_tg.token,
        ALLY_TELEGRAM_WEBHOOK_SECRET=SECRET,
        ALLY_TELEGRAM_API_URL=fake_tg.url,
        ALLY_TELEGRAM_MODE="polling",
        ALLY_TELEGRAM_POLL_LEASE=str(LEASE),
    )
    procs = [
        GatewayProcess({**env, "ALLY_DATA_DIR": str(tmp_path / f"data{n}")}, tmp_path / f"gw{n}.log") for n in range(2)
    ]
    redis = Redis.from_url(REDIS_URL)
    try:
        for proc in procs:
            await proc.start()
        yield Pollers(procs, settings, fake_tg, dedicated, redis)
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.stop()
        await redis.aclose()
        await wipe(settings.key_prefix)


async def test_one_process_polls_and_another_takes_over_when_it_dies(pollers: Pollers):
    await eventually(lambda: bool(pollers.holders()), timeout=20)
    lease = f"{pollers.settings.key_prefix}tg:poller:{tgs.BOT_ID}"
    holder_token = await pollers.redis.get(lease)
    # The holder renews its lease (seen as its time to live going up again) and nobody else polls.
    renewals, last = 0, await pollers.redis.pttl(lease)
    while renewals < 3:
        await asyncio.sleep(0.05)
        ttl = await pollers.redis.pttl(lease)
        renewals += ttl > last
        last = ttl
    assert len(pollers.holders()) == 1 and await pollers.redis.get(lease) == holder_token
    await pollers.link("u1", ALICE)
    [holder] = pollers.holders()
    holder.kill()
    await eventually(lambda: len(pollers.holders()) == 2, timeout=LEASE * 5 + 10)
    chat = tgs.private_chat(ALICE)
    sent = [tgs.text(chat, ALICE, f"after the takeover {n}") for n in range(10)]
    pollers.fake.push(*sent)
    await pollers.dedicated.wait_for(lambda: len(updates(pollers.dedicated, "u1")) >= 10, timeout=20)
    assert updates(pollers.dedicated, "u1") == sent


async def test_a_poller_killed_mid_batch_loses_nothing_and_delivers_nothing_twice(pollers: Pollers):
    await eventually(lambda: bool(pollers.holders()), timeout=20)
    await pollers.link("u1", ALICE)
    await pollers.link("u2", BOB)
    before = await pollers.queued("u1", "u2")
    batch = [tgs.text(tgs.private_chat(p), p, f"batch {n}") for n in range(50) for p in (ALICE, BOB)]
    [holder] = pollers.holders()
    pollers.fake.push(*batch)
    await eventually(lambda: _at_least(pollers, before + 5), timeout=20, every=0.001)
    holder.kill()
    queued = await pollers.queued("u1", "u2") - before
    # Killed in the middle of the batch: part of it queued, none of it acknowledged to Telegram.
    assert 0 < queued < len(batch)
    assert batch[0] in pollers.fake.updates
    await eventually(lambda: len(pollers.holders()) == 2, timeout=LEASE * 5 + 10)
    expected = {"u1": batch[0::2], "u2": batch[1::2]}
    # The killed process was delivering what it had queued (a process claims the users it queues
    # for): their leases lapse first (ALLY_DELIVERY_LEASE), then the other process delivers.
    budget = pollers.settings.delivery_lease + 30
    for user in expected:
        await pollers.dedicated.wait_for(lambda u=user: len(updates(pollers.dedicated, u)) >= 50, timeout=budget)
    await eventually(lambda: pollers.fake.updates == [], timeout=30)
    for user, sent in expected.items():
        assert updates(pollers.dedicated, user) == sent
    assert await pollers.queued("u1", "u2") - before == len(batch)
