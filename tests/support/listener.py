"""A bare TCP listener that counts connections: proof of whether the gateway connected at all."""

from __future__ import annotations

import asyncio


class Listener:
    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> int:
        async def accept(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            writer.close()

        self.server = await asyncio.start_server(accept, host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
