from __future__ import annotations

import gc
from pathlib import Path

from foundation import listener
from gateway.app import create_app
from tests.support.gateway import make_settings, wipe


async def test_start_sets_the_start_up_heap_aside_from_full_collections(tmp_path: Path):
    settings = make_settings(tmp_path)
    runner = await listener.start(create_app(settings))
    try:
        # Everything alive once the app is up (the SDKs' modules, the app's services) is frozen:
        # a full collection no longer walks it.
        assert gc.get_freeze_count() > 100_000
    finally:
        gc.unfreeze()
        await runner.cleanup()
        await wipe(settings.key_prefix)
