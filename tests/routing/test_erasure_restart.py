from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from foundation.redis_keys import Keys
from foundation.storage import connect
from foundation.types import Event
from foundation.vault import Vault
from routing.handoff import Handoff, Item
from routing.registry import Registry
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import REDIS_URL, make_settings, register_user, wipe
from tests.support.redisdump import containing, dump
from tests.support.subprocess_gateway import GatewayProcess, environment
from tests.support.waiting import eventually


@pytest.mark.slow
async def test_an_erasure_interrupted_by_a_crash_is_finished_after_the_restart(
    tmp_path: Path, dedicated: DedicatedServer
):
    # A hanging server keeps a delivery in flight for 3 s, and the erasure waits it out:
    # the window in which the gateway is killed.
    settings = dataclasses.replace(make_settings(tmp_path), delivery_timeout=3.0, delivery_lease=4.0)
    env = environment(settings)
    redis = connect(REDIS_URL)
    keys = Keys(settings.key_prefix)
    handoff = Handoff(redis, keys, Registry(redis, keys, Vault(redis, keys, settings.master_keys)), lambda _u: None)
    headers = {"Authorization": f"Bearer {settings.admin_token}"}
    first = GatewayProcess(env, tmp_path / "first.log")
    second = GatewayProcess(env, tmp_path / "second.log")
    try:
        await first.start()
        async with aiohttp.ClientSession(headers=headers) as http:
            await register_user(http, dedicated, "crashy", base=first.url, admin_token=settings.admin_token)
            dedicated.mode["crashy"] = "hang"
            await handoff("crashy", [Item(Event("telegram.update", "telegram", {"update_id": 1}), dedup="1")])
            await eventually(lambda: bool(dedicated.attempts))

            async with http.delete(f"{first.url}/admin/v1/users/crashy") as resp:
                assert resp.status == 202
            async with http.get(f"{first.url}/admin/v1/users/crashy") as resp:
                shown: dict[str, Any] = await resp.json()
            assert shown["status"] == "erasing"
            first.kill()
            # Killed half-way: the erasure is recorded and the user's keys are still there.
            assert await redis.hexists(keys.global_key("erasures"), "crashy")
            assert await redis.exists(keys.queue("crashy"))

            await second.start()
            for _ in range(300):
                async with http.get(f"{second.url}/admin/v1/users/crashy") as resp:
                    if resp.status == 404:
                        break
                    assert resp.status == 200
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the erasure was not finished after the restart")
        snapshot = await dump(redis, settings.key_prefix)
        assert containing(snapshot, b"crashy") == []
        assert "resumed interrupted erasures" in (tmp_path / "second.log").read_text()
    finally:
        first.kill()
        second.stop()
        await redis.aclose()
        await wipe(settings.key_prefix)
