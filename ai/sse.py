"""Server-sent events, split without being rewritten.

The relay forwards each event with the exact bytes the provider sent, and only
at event boundaries, so that an error event it has to add after a failure is
never glued onto half an event. Parsing follows the WHATWG event-stream rules
(lines end with CRLF, LF or CR; a blank line ends an event; `:` starts a comment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SseEvent:
    raw: bytes
    """The event as received, its terminating blank line included."""
    name: str
    """The `event:` field; empty when the event has none (or only comments)."""
    data: bytes
    """The `data:` lines joined with LF."""


class SseSplitter:
    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not ended yet."""
        return self._buffer

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        start = 0
        pos = 0
        name = ""
        data: list[bytes] = []
        while True:
            match = _LINE_END.search(self._buffer, pos)
            # A lone CR at the end may be the first half of a CRLF still in flight.
            if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
                break
            line = self._buffer[pos : match.start()]
            pos = match.end()
            if line:
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if field == b"event":
                    name = value.decode("utf-8", "replace")
                elif field == b"data":
                    data.append(value)
                continue
            events.append(SseEvent(self._buffer[start:pos], name, b"\n".join(data)))
            start = pos
            name = ""
            data = []
        self._buffer = self._buffer[start:]
        return events


def error_event(error_type: str, message: str) -> bytes:
    """An `error` event in the provider's own shape, for failures the provider could not report."""
    body = orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    return b"event: error\ndata: " + body + b"\n\n"


def error_type(data: bytes | None) -> str | None:
    """`error.type` of a provider error body (`{"type": "error", "error": {"type": ...}}`), if it is one."""
    if not data:
        return None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None
