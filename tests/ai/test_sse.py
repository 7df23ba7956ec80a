from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from ai.sse import SseSplitter, error_event, error_type

STREAM = (
    b'event: message_start\ndata: {"type": "message_start"}\n\n'
    b": a comment\r\n\r\n"
    b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n'
    b'event: content_block_delta\rdata: {"a":\rdata: 1}\r\r'
    b'event: message_stop\ndata:{"type": "message_stop"}\n\n'
)


def split_all(chunks: list[bytes]) -> tuple[list[tuple[bytes, str, bytes]], bytes]:
    splitter = SseSplitter()
    events = [(e.raw, e.name, e.data) for chunk in chunks for e in splitter.feed(chunk)]
    return events, splitter.pending


def test_events_keep_their_exact_bytes_and_parse_every_line_ending():
    events, pending = split_all([STREAM])
    assert b"".join(raw for raw, _, _ in events) == STREAM and pending == b""
    assert [name for _, name, _ in events] == ["message_start", "", "ping", "content_block_delta", "message_stop"]
    assert events[3][2] == b'{"a":\n1}'
    assert events[4][2] == b'{"type": "message_stop"}'


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_events(cuts: list[int]):
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert split_all(chunks) == split_all([STREAM])


def test_an_unfinished_event_stays_pending():
    events, pending = split_all([b"event: message_start\ndata: {}\n", b"event: x"])
    assert events == [] and pending == b"event: message_start\ndata: {}\nevent: x"


def test_error_events_have_the_providers_shape():
    raw = error_event("api_error", "cut off")
    events, _ = split_all([raw])
    assert events[0][1] == "error" and error_type(events[0][2]) == "api_error"
    assert error_type(b"not json") is None and error_type(b'{"type": "message"}') is None
