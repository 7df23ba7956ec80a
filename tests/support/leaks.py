"""What the leak tests share: marker strings, the search for them in every form they could
take, a private Redis with AOF, and the gateway's own log configuration captured at DEBUG."""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Iterator

import orjson
import pytest
from redis.asyncio import Redis

from foundation import logs
from tests.support.redis_servers import RedisServer
from tests.support.redisdump import dump

PRODUCT = {"foundation", "gateway", "routing", "oauth", "channels", "ai"}
"""The top-level packages whose loggers are the gateway's own."""


class Markers:
    """Unique strings, each standing for one kind of private data."""

    def __init__(self) -> None:
        self.all: dict[str, str] = {}

    def __call__(self, kind: str) -> str:
        value = f"Mk{kind.replace('_', '')}{os.urandom(6).hex()}"
        self.all[value] = kind
        return value

    def secret(self, kind: str, value: str) -> str:
        """A secret the gateway made or was given (not chosen by the test), searched for the same way."""
        self.all[value] = kind
        return value


def forms(value: str) -> list[bytes]:
    """The marker and the forms it could hide in: hex, and base64 at each of the three alignments."""
    raw = value.encode()
    found = [raw, raw.hex().encode()]
    for shift in range(3):
        chunk = b"\0" * shift + raw
        for encoded in (base64.b64encode(chunk), base64.urlsafe_b64encode(chunk)):
            # Drop the characters that depend on the padding or on the bytes around the marker.
            found.append(encoded.rstrip(b"=")[4:-4])
    return found


def leaks(markers: Markers, haystack: bytes) -> list[str]:
    return [f"{kind}: {value}" for value, kind in markers.all.items() if any(f in haystack for f in forms(value))]


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The gateway's own log configuration, at DEBUG, into a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    noisy = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    buffer = io.StringIO()
    logs.configure("DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, lvl in noisy.items():
            logging.getLogger(name).setLevel(lvl)


async def assert_nothing_leaked(markers: Markers, redis_server: RedisServer, log_output: io.StringIO) -> None:
    """No marker in any Redis key or value, in the AOF on disk, or in the logs."""
    redis = Redis.from_url(redis_server.url)
    try:
        snapshot = await dump(redis, "")
    finally:
        await redis.aclose()
    everything = b"\n".join(k + b"\n" + b"\n".join(parts) for k, parts in snapshot.items())
    assert len(snapshot) > 5
    assert leaks(markers, everything) == [], "in Redis"
    persisted = redis_server.persisted()
    assert len(persisted) > 1000  # the AOF is there and written
    assert leaks(markers, persisted) == [], "in the AOF"
    logged = log_output.getvalue().encode()
    # The capture works: several of the gateway's own modules logged into it.
    loggers = {orjson.loads(line)["logger"] for line in logged.splitlines() if line.startswith(b"{")}
    assert len({name for name in loggers if name.split(".")[0] in PRODUCT}) >= 3, loggers
    assert leaks(markers, logged) == [], "in the logs"
