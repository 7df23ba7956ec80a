"""HTTP/1.1 by hand over a raw socket: what a hostile client does that aiohttp's client never would
(bodies that never end, headers that trickle in), and a reader that notices when the server hangs up."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import orjson


@dataclass
class RawAnswer:
    status: int
    head: bytes
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return RawAnswer(status, head, body)


@dataclass
class Upload:
    """How an endless upload went: the answer, and how much had been sent when it came."""

    answer: RawAnswer
    sent: int


async def endless_upload(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    prefix: bytes = b"",
    planned: int = 256 << 20,
    chunk: int = 1 << 16,
) -> Upload:
    """POST a chunked body of up to `planned` bytes, stopping as soon as the server answers."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Transfer-Encoding: chunked"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        answered = asyncio.create_task(read_answer(reader))
        sent = 0
        if prefix:
            writer.write(f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n")
        piece = f"{chunk:x}\r\n".encode() + b"a" * chunk + b"\r\n"
        while sent < planned and not answered.done():
            writer.write(piece)
            try:
                await asyncio.wait_for(writer.drain(), 5.0)
            except (ConnectionError, TimeoutError):
                break  # the server stopped reading (it has answered, or is about to)
            sent += chunk
        answer = await asyncio.wait_for(answered, 15.0)
        return Upload(answer, sent)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def trickle(
    host: str, port: int, data: bytes, *, every: float = 0.1, limit: float = 30.0
) -> tuple[bytes, float, int]:
    """Send `data` one byte at a time; return what the server sent back, how long until it hung up
    (or `limit`), and how many bytes it had been given by then."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await asyncio.open_connection(host, port)
    received = bytearray()

    async def listen() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    listening = asyncio.create_task(listen())
    given = 0
    try:
        for byte in data:
            if listening.done() or loop.time() - start > limit:
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            given += 1
            await asyncio.sleep(every)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(listening), max(0.0, limit - (loop.time() - start)))
        return bytes(received), loop.time() - start, given
    finally:
        listening.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
