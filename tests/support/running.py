"""Running a local stand-in server for the length of a block."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar


class StandIn(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...


S = TypeVar("S", bound=StandIn)


@contextlib.asynccontextmanager
async def running(server: S) -> AsyncIterator[S]:
    """A stand-in (or the test dedicated server) listening for the duration of the block."""
    await server.start()
    try:
        yield server
    finally:
        await server.close()
