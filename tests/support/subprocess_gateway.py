"""`ally-gateway` as a real child process, for tests that kill and restart it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from foundation.config import Settings
from routing.sealing import b64url
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The child's environment: the test's settings as `ALLY_*` variables, nothing inherited."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ALLY_DATA_DIR": str(settings.data_dir),
        "ALLY_KEY_PREFIX": settings.key_prefix,
        "ALLY_ADMIN_TOKEN": settings.admin_token or "",
        "ALLY_MASTER_KEYS": ",".join(f"{k.kid}:{b64url(k.key)}" for k in settings.master_keys),
        "ALLY_DELIVERY_TIMEOUT": str(settings.delivery_timeout),
        "ALLY_DELIVERY_LEASE": str(settings.delivery_lease),
    }
    if settings.redis_url:
        env["ALLY_REDIS_URL"] = settings.redis_url
    env.update(extra)
    return env


def spawn_gateway(
    args: tuple[str, ...], env: dict[str, str], log_path: Path, *, own_session: bool = False
) -> subprocess.Popen[bytes]:
    """`python -m gateway *args`, its output appended to `log_path`; `own_session` puts it (and
    whatever it forks) in a process group of its own, to be signalled as a whole."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=own_session,
        )


class GatewayProcess:
    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.log_path = log_path
        self.args = args or ("serve",)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        self.proc = spawn_gateway(self.args, self.env, self.log_path)

    async def start(self, timeout: float = 20.0) -> None:
        """Spawn the process and wait until it answers /readyz."""
        self.spawn()
        assert self.proc is not None
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited at start:\n{self.log_path.read_text()[-3000:]}")
                try:
                    async with session.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"gateway not ready:\n{self.log_path.read_text()[-3000:]}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a crashed machine."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
