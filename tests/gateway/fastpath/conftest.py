"""The fast path's tests run on both event loops, as the delivery client's do: its transport
comes from the loop (uvloop's in production)."""

from tests.support.loops import pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories"]
