from __future__ import annotations

import asyncio
import uuid

from gateway import storage
from gateway.storage import connect
from tests.conftest import REDIS_URL


async def test_a_burst_larger_than_the_pool_waits_for_connections_instead_of_failing():
    redis = connect(REDIS_URL)
    key = f"t{uuid.uuid4().hex[:12]}:never-pushed"
    try:
        # Each BLPOP holds its connection for 50 ms; twice as many as the pool has must all succeed.
        burst = [redis.blpop([key], timeout=0.05) for _ in range(2 * storage.MAX_CONNECTIONS)]
        results = await asyncio.gather(*burst, return_exceptions=True)
        assert [r for r in results if r is not None] == []
    finally:
        await redis.aclose()
