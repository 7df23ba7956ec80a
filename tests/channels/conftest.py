from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.telegram import FakeTelegram
from tests.support.telegram_gateway import TgGateway, serve_tg, tg_settings


@pytest.fixture
async def tg(tmp_path: Path, fake_tg: FakeTelegram) -> AsyncIterator[TgGateway]:
    async for gateway in serve_tg(tg_settings(tmp_path, fake_tg), fake_tg):
        yield gateway
