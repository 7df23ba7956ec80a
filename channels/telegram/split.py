"""Splitting a long sendMessage text into messages Telegram accepts.

Telegram measures text and entity offsets in UTF-16 code units; a message holds at
most 4096. The text is cut at the last paragraph break that fits, else the last line
break, else the last space, else hard (never inside a surrogate pair). Entities are
clipped to each part and re-based, so formatting given as `entities` survives.
"""

from __future__ import annotations

from typing import Any

LIMIT = 4096


def _units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def utf16_len(text: str) -> int:
    return sum(_units(ch) for ch in text)


def split_ranges(text: str, limit: int = LIMIT) -> list[tuple[int, int]]:
    """Code-point ranges [start, end) of the parts, separators dropped, blank parts skipped."""
    ranges: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        end, size = start, 0
        while end < n and size + _units(text[end]) <= limit:
            size += _units(text[end])
            end += 1
        if end >= n:
            cut, resume = n, n
        else:
            window = text[start:end]
            for sep in ("\n\n", "\n", " "):
                at = window.rfind(sep)
                if at > 0:
                    cut, resume = start + at, start + at + len(sep)
                    break
            else:
                cut, resume = end, end
        if text[start:cut].strip():
            ranges.append((start, cut))
        start = resume
    return ranges


def split_message(text: str, entities: list[dict[str, Any]] | None, limit: int = LIMIT) -> list[tuple[str, list[Any]]]:
    """(text, entities) per part; entities given in UTF-16 offsets of the whole text."""
    offsets = [0]
    for ch in text:
        offsets.append(offsets[-1] + _units(ch))
    parts: list[tuple[str, list[Any]]] = []
    for start, end in split_ranges(text, limit):
        lo, hi = offsets[start], offsets[end]
        mine: list[Any] = []
        for entity in entities or []:
            begin = int(entity.get("offset", 0))
            finish = begin + int(entity.get("length", 0))
            a, b = max(begin, lo), min(finish, hi)
            if a < b:
                mine.append({**entity, "offset": a - lo, "length": b - a})
        parts.append((text[start:end], mine))
    return parts
