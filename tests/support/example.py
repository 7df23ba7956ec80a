"""The example dedicated server, run as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path


async def print_key(key_file: Path, *flags: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--print-key", "--key-file", str(key_file), *flags, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode().strip()


@contextlib.asynccontextmanager
async def example_server(key_file: Path, user_id: str, secret: str, **env: str) -> AsyncIterator[ExampleProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--port",
        "0",
        "--user-id",
        user_id,
        "--key-file",
        str(key_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "ALLY_WEBHOOK_SECRET": secret, **env},
    )
    example = ExampleProcess(proc)
    pump = asyncio.create_task(example.pump())
    try:
        await example.wait_for(lambda out: "listening on " in out)
        yield example
    finally:
        await stop(proc)
        await pump


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


EXAMPLE = EXAMPLES / "dedicated_server.py"


@dataclass
class ExampleProcess:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip("\n"))
            self.changed.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> None:
        async def loop() -> None:
            while not predicate(self.output):
                if self.proc.returncode is not None:
                    raise AssertionError(f"example server exited:\n{self.output}")
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.5)

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(f"not seen in the example's output:\n{self.output}") from None

    def url(self) -> str:
        line = next(x for x in self.lines if "listening on " in x)
        return line.partition("listening on ")[2]


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
