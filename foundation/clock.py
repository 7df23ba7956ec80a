"""Time as the gateway shows it: ISO 8601 in UTC with milliseconds and `Z`
(`2026-11-27T10:00:00.123Z`), one format for every timestamp of every API, event and log; and
HTTP's own `Date` header, for the answers the listener writes itself (`foundation.fastpath`)."""

from __future__ import annotations

import email.utils
import time

_second = (-1, "")
"""The last whole second formatted, and its text: most timestamps fall in the same second."""


def iso(ts: float) -> str:
    """`ts` (seconds since the epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`."""
    global _second
    ms = int(ts * 1000)
    second = ms // 1000
    if _second[0] != second:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{ms % 1000:03d}Z"


def iso_now() -> str:
    return iso(time.time())


_http_second = (-1, b"")


def http_date() -> bytes:
    """Now as HTTP's `Date` header shows it (RFC 9110 IMF-fixdate), formatted once a second."""
    global _http_second
    second = int(time.time())
    if _http_second[0] != second:
        _http_second = (second, email.utils.formatdate(second, usegmt=True).encode())
    return _http_second[1]
