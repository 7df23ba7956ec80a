"""Time as the gateway shows it: ISO 8601 in UTC with milliseconds and `Z`
(`2026-11-27T10:00:00.123Z`), one format for every timestamp of every API, event and log."""

from __future__ import annotations

import time


def iso(ts: float) -> str:
    """`ts` (seconds since the epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    ms = int(ts * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def iso_now() -> str:
    return iso(time.time())
