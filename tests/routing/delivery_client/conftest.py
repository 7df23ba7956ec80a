"""The delivery client's tests run on both event loops: asyncio's, and uvloop's, which the
gateway runs on (their transports differ in more than speed)."""

from tests.support.loops import pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories"]
