"""`ally-gateway serve --workers N` as a real process tree, and what Linux's /proc tells about it:
a process's children, who is left in its session, and which process holds a connection."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.support.subprocess_gateway import spawn_gateway


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces or parentheses: the fields start after the last ')'.
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def gone(pid: int) -> bool:
    """Reaped: every thread has exited, so its sockets are closed. (A killed process's main thread
    can show as a zombie while its other threads still hold them.)"""
    return _stat(pid) is None


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(parent: int) -> list[int]:
    return sorted(pid for pid in _all_pids() if (f := _stat(pid)) and f[0] != "Z" and int(f[1]) == parent)


def in_session(session: int) -> list[int]:
    """Live processes of a session (everything a process started, unless it left the session)."""
    return sorted(pid for pid in _all_pids() if (f := _stat(pid)) and f[0] != "Z" and int(f[3]) == session)


def command_of(pid: int) -> str:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def holder(client: socket.socket, candidates: list[int]) -> int | None:
    """The process among `candidates` that holds the server side of `client`'s connection
    (IPv4 loopback). Call it after an answer came back: only then was the connection accepted."""
    client_port = client.getsockname()[1]
    server_port = client.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError, OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, socket.socket]:
    """One HTTP/1.1 request on a fresh connection, left open (so its holder can be found)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head_bytes.split(b"\r\n") if line.lower().startswith(b"content-length")),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    status = int(head_bytes.split(b" ")[1]) if head_bytes else 0
    return status, body, sock


class Supervised:
    """`python -m gateway serve --workers N ...`, in a session of its own, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.env = env
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> Supervised:
        self.proc = spawn_gateway(self.args, self.env, self.log_path, own_session=True)
        return self

    def start(self, message: str = "listening", timeout: float = 60.0) -> dict[str, Any]:
        """Spawn, then wait for the parent's one `listening` (or `worker running`) line."""
        self.spawn()

        def announced() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            return next((e for e in self.entries() if e.get("msg") == message), None)

        entry: dict[str, Any] = wait_until(announced, timeout, f"{message!r} in {self.log_path.name}")
        self.port = int(entry.get("port", 0))
        return entry

    def text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def entries(self) -> list[dict[str, Any]]:
        found = []
        for line in self.text().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
        return found

    def children(self) -> list[int]:
        return children_of(self.pid)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to whatever of the session is left (a failed test leaves nothing)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in in_session(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
