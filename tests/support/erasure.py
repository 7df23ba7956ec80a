"""Waiting for an erasure to finish, and data unique to one test."""

from __future__ import annotations

import asyncio
import os

from tests.support.gateway import Gateway


async def wait_gone(gateway: Gateway, user_id: str, timeout: float = 20.0) -> None:
    async def gone() -> None:
        while True:
            resp = await gateway.admin("GET", f"/admin/v1/users/{user_id}")
            if resp.status == 404:
                return
            assert resp.status == 200
            await asyncio.sleep(0.05)

    await asyncio.wait_for(gone(), timeout)


def unique(name: str) -> str:
    return f"{name}-{os.urandom(4).hex()}"
