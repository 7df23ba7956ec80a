"""A private `redis-server` on a free loopback port, with AOF on, for tests that read its files."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from foundation.embedded import redis_server_binary
from tests.support.subprocess_gateway import free_port


class RedisServer:
    def __init__(self, directory: Path, *, appendonly: bool = True, extra: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.extra = extra
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            # Plain RESP commands in the AOF, no compressed RDB preamble: a test can search it.
            "--aof-use-rdb-preamble", "no",
            "--logfile", str(self.dir / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()[-2000:]}")

    def persisted(self) -> bytes:
        """Everything Redis wrote to disk (AOF files, wherever this version keeps them)."""
        return b"".join(p.read_bytes() for p in sorted(self.dir.rglob("*")) if p.is_file() and p.suffix != ".log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
