"""Open-loop load generator, run as its own process: Telegram webhook updates at a fixed rate.

Request i is due at t0 + i/rate whatever happened to the requests before it (open loop:
a slow system gets more concurrent requests, not fewer, so its latency is not hidden).
It speaks HTTP/1.1 keep-alive over plain asyncio protocols, one request per connection at a
time, opening connections as needed, because a full HTTP client library would cost more
CPU than the systems it measures on a small machine.

Request i goes to user i mod N, so one user's updates are N/rate seconds apart. Each update
is shaped like the Bot API's `Update` with a text `message` from a private chat.

Spec (JSON file): {"port", "rate", "duration", "first_update_id", "users": [[path, chat_id,
bearer?]...], "headers": {..}, "max_conns"}; optional "method" and a fixed "body" (instead of
an update), "count" (instead of rate × duration), "closed": N (closed loop instead: N
connections each sending again when answered), "keep_bodies". Output (JSON file): per
request [user index, update_id, sent (monotonic), answered (monotonic), status], how late
the generator itself ran, its own CPU time, and the answers' bodies when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from bench.sink import run

_TEXT = b"Hey, can you move my 3pm with Dana to tomorrow morning and tell her why?"


def update_body(update_id: int, chat_id: int, date: int) -> bytes:
    return orjson.dumps(
        {
            "update_id": update_id,
            "message": {
                "message_id": update_id % 1_000_000 + 1,
                "from": {"id": chat_id, "is_bot": False, "first_name": "Dana", "language_code": "en"},
                "chat": {"id": chat_id, "first_name": "Dana", "type": "private"},
                "date": date,
                "text": _TEXT.decode(),
            },
        }
    )


class Conn(asyncio.Protocol):
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.current: int = -1
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed"))
        if self.current >= 0:
            self.gen.answered(self.current, 599)
            self.current = -1
        self.gen.dead(self)

    def send(self, index: int, request: bytes) -> None:
        assert self.transport is not None
        self.current = index
        self.gen.sent[index] = time.monotonic()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buf[:head_end]).lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buf) < head_end + 4 + length:
                return
            status = int(head[9:12])
            body = bytes(self.buf[head_end + 4 : head_end + 4 + length])
            del self.buf[: head_end + 4 + length]
            index, self.current = self.current, -1
            if index >= 0:
                self.gen.answered(index, status, body)
            self.gen.idle(self)


class Generator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.port = int(spec["port"])
        self.rate = float(spec.get("rate", 0))
        self.closed = int(spec.get("closed", 0))
        self.duration = float(spec["duration"])
        self.count = int(spec.get("count") or max(1, round(self.rate * self.duration)))
        self.first = int(spec.get("first_update_id", 0))
        self.method = str(spec.get("method", "POST")).encode()
        self.body: bytes | None = spec["body"].encode() if spec.get("body") is not None else None
        self.users: list[tuple[bytes, int, bytes]] = [
            (
                u[0].encode(),
                int(u[1]),
                f"Authorization: Bearer {u[2]}\r\n".encode() if len(u) > 2 and u[2] else b"",
            )
            for u in spec["users"]
        ]
        extra = "".join(f"{k}: {v}\r\n" for k, v in spec.get("headers", {}).items())
        self.head = f"Host: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n{extra}".encode()
        self.max_conns = int(spec.get("max_conns", 1024))
        self.keep_bodies = bool(spec.get("keep_bodies"))
        self.sent: list[float] = []
        self.done: list[float] = []
        self.status: list[int] = []
        self.bodies: list[str] = []
        self.free: deque[Conn] = deque()
        self.waiting: deque[tuple[int, bytes]] = deque()
        self.conns = 0
        self.outstanding = 0
        self.finished = asyncio.Event()
        self.all_issued = False
        self.late_ms: list[float] = []
        self.date = int(time.time())
        self.stop_at = 0.0

    def request(self, index: int) -> bytes:
        path, chat, auth = self.users[index % len(self.users)]
        body = self.body if self.body is not None else update_body(self.first + index, chat, self.date)
        return b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
            self.method, path, self.head, auth, len(body), body,
        )  # fmt: skip

    def answered(self, index: int, status: int, body: bytes = b"") -> None:
        self.done[index] = time.monotonic()
        self.status[index] = status
        if self.keep_bodies:
            self.bodies[index] = body.decode(errors="replace")
        self.outstanding -= 1
        if self.closed and not self.all_issued and time.monotonic() < self.stop_at:
            self.issue(len(self.sent))
        elif self.outstanding == 0 and (self.all_issued or self.closed):
            self.finished.set()

    def idle(self, conn: Conn) -> None:
        if self.waiting:
            conn.send(*self.waiting.popleft())
        else:
            self.free.append(conn)

    def dead(self, conn: Conn) -> None:
        self.conns -= 1
        if conn in self.free:
            self.free.remove(conn)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.conns += 1
        try:
            _t, conn = await loop.create_connection(lambda: Conn(self), "127.0.0.1", self.port)
            await asyncio.wait_for(conn.ready, 5)
        except (OSError, TimeoutError):
            self.conns -= 1
            return
        self.idle(conn)

    def issue(self, index: int) -> None:
        self.sent.append(0.0)
        self.done.append(0.0)
        self.status.append(0)
        if self.keep_bodies:
            self.bodies.append("")
        self.outstanding += 1
        data = self.request(index)
        if self.free:
            self.free.popleft().send(index, data)
            return
        self.waiting.append((index, data))
        if self.conns < self.max_conns:
            asyncio.get_running_loop().create_task(self.open())

    async def run(self) -> None:
        warm = self.closed or min(self.count, 64)
        await asyncio.gather(*(self.open() for _ in range(min(warm, self.max_conns))))
        if self.closed:
            await self._closed_loop()
        else:
            await self._open_loop()
        if self.outstanding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), 30)

    async def _closed_loop(self) -> None:
        """`closed` connections, each sending its next request when the last one is answered."""
        self.stop_at = time.monotonic() + self.duration
        for _ in range(self.closed):
            self.issue(len(self.sent))
        await asyncio.sleep(self.duration)
        self.all_issued = True

    async def _open_loop(self) -> None:
        interval = 1.0 / self.rate
        start = time.monotonic() + 0.05
        i = 0
        while i < self.count:
            now = time.monotonic()
            due = min(self.count, int((now - start) / interval) + 1) if now >= start else 0
            if due > i:
                self.late_ms.append((now - (start + i * interval)) * 1000)
            while i < due:
                self.issue(i)
                i += 1
            if i < self.count:
                await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
        self.all_issued = True


async def generate(spec: dict[str, Any]) -> dict[str, Any]:
    gen = Generator(spec)
    began, cpu = time.monotonic(), time.process_time()
    await gen.run()
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
    n_users = len(gen.users)
    return {
        "rows": [[i % n_users, gen.first + i, gen.sent[i], gen.done[i], gen.status[i]] for i in range(len(gen.sent))],
        "late_ms": gen.late_ms or [0.0],
        "elapsed": elapsed,
        "cpu_s": cpu,
        "conns": gen.conns,
        "bodies": gen.bodies,
    }


def main(spec_path: str, out_path: str) -> None:
    spec = orjson.loads(Path(spec_path).read_bytes())
    out: dict[str, Any] = {}

    async def go() -> None:
        out.update(await generate(spec))

    run(go())
    Path(out_path).write_bytes(orjson.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
