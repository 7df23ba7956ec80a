"""Which queued events still need an older server key (contract §9.6).

Events are sealed when they arrive and the queue is a stream that only ever loses entries from
its head, so the events sealed to one key form one run of the stream. A key change records where
the old key's run ends (how many entries the stream had ever been given, and its last id, read in
the same atomic step as the change, so no event lands on the wrong side) in the user record's
`key_history`. How many events still need an older key is then arithmetic on `XINFO STREAM`
(O(1)), whatever the queue's length. "Ever given" is the stream's own `entries-added` (Redis 7);
Redis 6.2 (the embedded default) lacks it, and the hand-over's `events_in` counter, which counts
the same entries, stands in for it.

The registry (`routing/registry.py`) writes the history; this module reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from foundation import user_fields as record
from foundation.errors import StorageError
from routing.sealing import decode_public_key, kid_of, suite_of

# The queue stream's length, entries ever added, first and last id. KEYS: queue, counters.
STREAM = """
local function stream(queue, counters)
  local length, added, first, last = 0, nil, '', '0-0'
  if redis.call('EXISTS', queue) == 1 then
    local info = redis.call('XINFO', 'STREAM', queue)
    for i = 1, #info, 2 do
      local name, value = info[i], info[i + 1]
      if name == 'length' then length = value end
      if name == 'entries-added' then added = value end
      if name == 'last-generated-id' then last = value end
      if name == 'first-entry' and value then first = value[1] end
    end
  end
  if not added then added = tonumber(redis.call('HGET', counters, 'events_in') or '0') end
  return length, added, first, last
end
"""
# KEYS: user record, queue, counters. Returns {server key, key_history, stream length, entries
# added, first entry id}, read together so the counts match the history (`KeyState`).
KEY_STATE = record.lua(
    STREAM
    + """
local user = redis.call('HMGET', KEYS[1], @server_public_key, @key_history)
local length, added, first = stream(KEYS[2], KEYS[3])
return {user[1] or '', user[2] or '', length, added, first}
"""
)


@dataclass(frozen=True, slots=True)
class OlderKey:
    kid: str
    suite: str
    held: int
    """Queued events sealed to this key."""
    replaced_at: float


@dataclass(frozen=True, slots=True)
class KeyStatus:
    suite: str
    kid: str
    older: tuple[OlderKey, ...]
    """Older keys that queued events still need, oldest first."""

    @property
    def held_for_older_keys(self) -> int:
        return sum(k.held for k in self.older)


class KeyState(NamedTuple):
    """`KEY_STATE`'s answer: the stored key (empty: none) and its `key_history`, with the queue
    stream's counts read in the same step."""

    current: str
    history: list[dict[str, Any]]
    length: int
    added: int
    first_id: str

    @classmethod
    def parse(cls, reply: object) -> KeyState:
        if not isinstance(reply, list) or len(reply) != len(cls._fields):
            raise StorageError(f"the key state script answered {type(reply).__name__}, not {len(cls._fields)} values")
        current, history_raw, length, added, first = reply
        if not all(isinstance(v, bytes) for v in (current, history_raw, first)):
            raise StorageError("the key state script answered a key, history or stream id that is not a string")
        if not isinstance(length, int) or not isinstance(added, int):
            raise StorageError("the key state script answered stream counts that are not integers")
        history = orjson.loads(history_raw) if history_raw else []
        if not isinstance(history, list):
            raise StorageError("the stored key_history is not a list")
        return cls(current.decode(), history, length, added, first.decode())

    def held(self) -> list[int]:
        """How many queued events each run of `history` still holds."""
        return held_per_run(self.history, self.length, self.added, self.first_id)

    def status(self) -> KeyStatus:
        """The key in use and the older ones that queued events still need."""
        raw = decode_public_key(self.current)
        kid = kid_of(raw)
        older: dict[str, OlderKey] = {}
        for run, n in zip(self.history, self.held(), strict=True):
            # A server that went back to an earlier key opens that run with the key in use.
            if n and run["kid"] != kid:
                seen = older.get(run["kid"])
                older[run["kid"]] = OlderKey(
                    run["kid"], run["suite"], n + (seen.held if seen else 0), float(run["replaced_at"])
                )
        return KeyStatus(suite_of(raw), kid, tuple(older.values()))


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms or 0), int(seq or 0)


def held_per_run(history: list[dict[str, Any]], length: int, added: int, first_id: str) -> list[int]:
    """How many queued events each recorded key run still holds. The stream loses entries only
    from its head, so the `added - length` oldest entries ever added are gone."""
    gone = added - length
    held, start = [], 0
    for run in history:
        end = int(run["until_added"])
        # A stream whose first entry is newer than the run's last id holds none of it (this also
        # covers a stream deleted and started again, whose `entries-added` began from zero).
        if length == 0 or not first_id or _stream_id(first_id) > _stream_id(run["until_id"]):
            held.append(0)
        else:
            held.append(max(0, min(end, added) - max(start, gone)))
        start = end
    return held
