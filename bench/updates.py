"""What reading a Telegram Update costs the webhook, per update: the gateway's dict reader
(`channels/telegram/updates.py`) against python-telegram-bot's `Update.de_json` with the
checks the gateway ran on it before (`tests/support/ptb_updates.py`), measured in the same run.

- parse: the body (already a dict, as `read_json_object` gives it) to what routing reads;
- parse and route: the same, then every question routing asks of it (its chat, a link code,
  bot added or removed, whether someone wrote).

CPU time of this one thread (`timeit` with `time.process_time`), on a private-chat text
message and on a photo message with a caption; rounds of the two readers interleaved, the
median reported. `python -m bench --only updates`, or alone: `python -m bench.updates`.
"""

from __future__ import annotations

import asyncio
import time
import timeit
from collections.abc import Callable
from typing import Any

from bench.common import Results, Row, log, machine, median
from bench.sealing import UPDATE as TEXT
from channels.telegram import notices, updates
from tests.support import ptb_updates as ptb

N = 5000
BOT_ID = 7012345678
PHOTO = {
    "update_id": 912345679,
    "message": {
        "message_id": 4712,
        "from": {"id": 424242, "is_bot": False, "first_name": "Alice", "username": "alice", "language_code": "en"},
        "chat": {"id": 424242, "first_name": "Alice", "username": "alice", "type": "private"},
        "date": 1795773600,
        "photo": [
            {
                "file_id": f"AgACAgIAAxkBAAIBb2Z{size}",
                "file_unique_id": f"AQADq{size}",
                "file_size": size * 90,
                "width": size,
                "height": size * 3 // 4,
            }
            for size in (90, 320, 800, 1280)
        ],
        "caption": "The whiteboard from this morning, can you turn it into a list?",
        "caption_entities": [{"offset": 4, "length": 10, "type": "bold"}],
    },
}


def route_now(data: dict[str, Any]) -> object:
    update = updates.parse_update(data)
    return (
        updates.chat_of(update),
        updates.start_code(update.message),
        updates.added_by(update, BOT_ID),
        updates.removed(update, BOT_ID),
        notices.writes(update),
    )


def route_before(data: dict[str, Any]) -> object:
    update = ptb.parse_update(data)
    return (
        ptb.chat_of(update),
        ptb.start_code(update.message),
        ptb.added_by(update, BOT_ID),
        ptb.removed(update, BOT_ID),
        ptb.writes(update),
    )


def per_update_us(read: Callable[[dict[str, Any]], object], data: dict[str, Any]) -> float:
    # CPU time, not wall time: other processes on a shared machine stretch wall time only.
    timer = timeit.Timer(lambda: read(data), timer=time.process_time)
    return timer.timeit(number=N) / N * 1e6


async def run(results: Results, *, rounds: int = 3) -> None:
    cases = {"text message": TEXT, "photo message": PHOTO}
    readers = {
        "parse": (updates.parse_update, ptb.parse_update),
        "parse and route": (route_now, route_before),
    }
    for data in cases.values():
        assert route_now(data) == route_before(data), "the two readers must agree before they are timed"
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(rounds):
        for case, data in cases.items():
            for step, (now, before) in readers.items():
                times.setdefault((step, case, "now"), []).append(per_update_us(now, data))
                times.setdefault((step, case, "before"), []).append(per_update_us(before, data))
    for step in readers:
        for case in cases:
            now_us, before_us = times[(step, case, "now")], times[(step, case, "before")]
            row = Row("updates", f"{step}, {case}", median(now_us), "µs", rounds=now_us)
            row.baseline, row.baseline_name = median(before_us), "python-telegram-bot Update.de_json + checks"
            results.add(row)
    results.note("updates", f"{N} updates per round and reader; CPU time of one thread")


def main() -> None:
    results = Results(machine())
    log(f"updates: both readers, one core; load average {results.machine['loadavg_at_start']}")
    asyncio.run(run(results))
    print(results.table())
    for text in results.notes.get("updates", []):
        print(f"- {text}")


if __name__ == "__main__":
    main()
