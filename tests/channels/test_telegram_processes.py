"""Two real gateway processes behind one bot: Telegram's retries and load balancing may deliver
consecutive updates of one chat to different processes; the user's server still sees them in order."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import ADMIN_TOKEN, REDIS_URL, register_user, wipe
from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import SECRET

ROOT = Path(__file__).resolve().parents[2]
ALICE = tgs.person(555000555, "Alice", "alice")


class Process:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, lines: list[str], drain: asyncio.Task[None]):
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.lines = lines
        self.drain = drain


async def _spawn(env: dict[str, str]) -> Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(proc.stderr.readline(), 30)
        if not raw:
            raise AssertionError("gateway exited before listening:\n" + "\n".join(lines))
        lines.append(raw.decode())
        with contextlib.suppress(orjson.JSONDecodeError):
            entry = orjson.loads(raw)
            if entry.get("msg") == "listening":
                break

    async def drain() -> None:
        assert proc.stderr is not None
        while raw := await proc.stderr.readline():
            lines.append(raw.decode())

    return Process(proc, int(entry["port"]), lines, asyncio.create_task(drain()))


@pytest.fixture
async def two_gateways(tmp_path: Path, fake_tg: FakeTelegram) -> AsyncIterator[list[Process]]:
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    master = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PORT": "0",
        "ALLY_REDIS_URL": REDIS_URL,
        "ALLY_KEY_PREFIX": prefix,
        "ALLY_ADMIN_TOKEN": ADMIN_TOKEN,
        "ALLY_MASTER_KEYS": f"k1:{master}",
        "ALLY_TELEGRAM_BOT_TOKEN": fake_tg.token,
        "ALLY_TELEGRAM_WEBHOOK_SECRET": SECRET,
        "ALLY_TELEGRAM_API_URL": fake_tg.url,
    }
    procs: list[Process] = []
    try:
        for n in range(2):
            procs.append(await _spawn({**env, "ALLY_DATA_DIR": str(tmp_path / f"data{n}")}))
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.proc.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.proc.wait(), 10)
            except TimeoutError:
                p.proc.kill()
                await p.proc.wait()
            await p.drain
        await wipe(prefix)


@pytest.mark.slow
async def test_alternate_updates_through_two_processes_arrive_in_order(
    two_gateways: list[Process], dedicated: DedicatedServer
):
    first, second = two_gateways
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    hook = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with aiohttp.ClientSession() as http:
        await register_user(http, dedicated, "u1", base=first.url)
        async with http.post(f"{second.url}/admin/v1/users/u1/telegram/link", headers=admin) as resp:
            code = (await resp.json())["code"]
        start = tgs.start(tgs.private_chat(ALICE), ALICE, code)
        async with http.post(f"{first.url}/telegram/webhook/{tgs.BOT_ID}", json=start, headers=hook) as resp:
            assert resp.status == 200
        sent: list[dict[str, Any]] = []
        for n in range(30):
            update = tgs.text(tgs.private_chat(ALICE), ALICE, f"message {n}")
            target = (first, second)[n % 2]
            async with http.post(f"{target.url}/telegram/webhook/{tgs.BOT_ID}", json=update, headers=hook) as resp:
                assert resp.status == 200
            sent.append(update)
    await dedicated.wait_for(
        lambda: len([e for e in dedicated.events("u1") if e["type"] == "telegram.update"]) >= 30, timeout=20
    )
    events = dedicated.events("u1")
    assert events[0]["type"] == "telegram.linked"
    assert [e["payload"] for e in events[1:]] == sent
