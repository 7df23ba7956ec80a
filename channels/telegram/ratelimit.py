"""Outbound limits for the shared bot, kept in Redis so every gateway process shares them.

Telegram's documented limits: about one message a second per chat (short bursts
allowed), 20 a minute per group, about 30 a second for the whole bot. Per chat and
per group the limit is a GCRA reservation made when the call arrives: it says when
the call may go at the earliest. The bot-wide budget is shared fairly between users
with start-time fair queueing: each waiting call carries a start tag
`max(virtual time, the user's last finish tag)`, and a token of the bot-wide bucket
goes to the waiting call with the smallest tag among those whose chat allows them to
go now. A user with a long backlog only delays their own later calls; another user's
single message is next in line at once.

Every Bot API call counts, whatever its method: against its chat (when it names one),
against the group limit (when it posts into a group) and in the caller's fair share of
the bot. A call that would wait longer than `max_wait` is refused with 429 and
`Retry-After`.

A Telegram 429 (`flood`) pauses what it was for, for `retry_after` capped at one hour:
the chat the call named, or the calling user's calls that name no chat. It pauses the
whole bot only when the limit hit is the bot's: when calls of at least two different
users got a 429 within ten seconds. Telegram's answer does not say which limit it was;
a chat's or a user's own limit shows in that chat or user only, while the bot-wide one
shows in everyone's calls. One tenant alone (however many chats it has) can therefore
never pause the bot for the others, and neither can the gateway's own replies.

All keys share one hash tag per bot, so the scripts run in Redis Cluster too.
Times are whole microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation import metrics
from foundation.errors import StorageError, TooManyRequests
from foundation.redis_keys import Keys

# KEYS: waiting zset, ticket meta hash, user finish tag, virtual time, ticket counter, chat TAT, group TAT,
#       user pause.
# ARGV: now, chat T (0 = no chat), chat tau, group T (0 = not a group message), group tau, max wait,
#       max backlog (tags), global T, key ttl ms.
_ENQUEUE = """
local now = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[6])
local function tat_of(key)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  return tat
end
local eligible = now
local chat_t = tonumber(ARGV[2])
local chat_tat = 0
if chat_t > 0 then
  chat_tat = tat_of(KEYS[6])
  eligible = math.max(eligible, chat_tat - tonumber(ARGV[3]))
end
local group_tat = 0
local group_t = tonumber(ARGV[4])
if group_t > 0 then
  group_tat = tat_of(KEYS[7])
  eligible = math.max(eligible, group_tat - tonumber(ARGV[5]))
end
eligible = math.max(eligible, tonumber(redis.call('GET', KEYS[8]) or '0'))
if eligible - now > max_wait then return {-1, eligible - now} end
local vt = tonumber(redis.call('GET', KEYS[4]) or '0')
local start = math.max(vt, tonumber(redis.call('GET', KEYS[3]) or '0'))
if start - vt > tonumber(ARGV[7]) then
  return {-1, math.floor((start - vt) * tonumber(ARGV[8]))}
end
local ttl = tonumber(ARGV[9])
if chat_t > 0 then
  redis.call('SET', KEYS[6], string.format('%d', math.max(chat_tat, eligible) + chat_t), 'PX', ttl)
end
if group_t > 0 then
  redis.call('SET', KEYS[7], string.format('%d', math.max(group_tat, eligible) + group_t), 'PX', ttl)
end
redis.call('SET', KEYS[3], string.format('%d', start + 1), 'PX', ttl)
local ticket = string.format('%016d', redis.call('INCR', KEYS[5]))
redis.call('ZADD', KEYS[1], start, ticket)
redis.call('HSET', KEYS[2], ticket, string.format('%d:%d', eligible, now))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {0, ticket, eligible - now}
"""

# KEYS: waiting zset, ticket meta hash, bot TAT, virtual time, pause.
# ARGV: ticket, now, global T, global tau, stale after, scan limit, key ttl ms.
_TRY = """
local now = tonumber(ARGV[2])
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
local meta = redis.call('HGET', KEYS[2], ARGV[1])
if not mine or not meta then return {-2, 0} end
local my_eligible = tonumber(string.match(meta, '^(%d+)'))
redis.call('HSET', KEYS[2], ARGV[1], string.format('%d:%d', my_eligible, now))
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local pause = tonumber(redis.call('GET', KEYS[5]) or '0')
if pause > now then return {1, pause - now} end
if my_eligible > now then return {1, my_eligible - now} end
local stale = tonumber(ARGV[5])
local ahead = 0
for _, t in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[6]) - 1)) do
  if t == ARGV[1] then break end
  local m = redis.call('HGET', KEYS[2], t)
  local e, seen
  if m then e, seen = string.match(m, '^(%d+):(%d+)$') end
  if not m or now - tonumber(seen) > stale then
    -- Its caller is gone (process died or request dropped): it must not block anyone.
    redis.call('ZREM', KEYS[1], t)
    redis.call('HDEL', KEYS[2], t)
  elseif tonumber(e) <= now then
    ahead = ahead + 1
  end
end
local gt = tonumber(ARGV[3])
if ahead > 0 then return {1, ahead * gt} end
local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
if tat < now then tat = now end
local at = tat - tonumber(ARGV[4])
if at > now then return {1, at - now} end
redis.call('SET', KEYS[3], string.format('%d', tat + gt), 'PX', ARGV[7])
if tonumber(mine) > tonumber(redis.call('GET', KEYS[4]) or '0') then
  redis.call('SET', KEYS[4], mine)
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return {0, 0}
"""

# KEYS: pause. ARGV: until. Only ever extends a pause.
_PAUSE = """
local until_ = tonumber(ARGV[1])
if until_ > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%d', until_), 'PXAT', string.format('%d', math.floor(until_ / 1000) + 1000))
end
return 0
"""

# A Telegram 429. KEYS: what it pauses (the chat's TAT, or the user's pause), recent 429s, bot pause.
# ARGV: now, until, how far the key is set past `until` (the chat's burst), who (hashed; '' = the
#       gateway itself), window, distinct users that make it bot-wide.
# → 1 when the bot as a whole was paused.
_FLOOD = """
local now, until_ = tonumber(ARGV[1]), tonumber(ARGV[2])
local mark = until_ + tonumber(ARGV[3])
if mark > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%d', mark), 'PXAT', string.format('%d', math.floor(mark / 1000) + 60000))
end
if ARGV[4] == '' then return 0 end
local window = tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('PEXPIRE', KEYS[2], math.floor(window / 1000) + 1000)
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[6]) then return 0 end
if until_ > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], string.format('%d', until_), 'PXAT', string.format('%d', math.floor(until_ / 1000) + 1000))
end
return 1
"""

MAX_PAUSE = 3600.0
"""The longest any Telegram 429 pauses anything (its `retry_after` is capped to this)."""
BOT_WIDE_WINDOW = 10.0
BOT_WIDE_USERS = 2
"""429s for this many different users within the window: Telegram is limiting the bot, not a chat."""

US = 1_000_000


@dataclass(frozen=True)
class Limits:
    chat_interval: float = 1.0
    chat_burst: int = 3
    # 3 at once, then one per 3.5 s: never more than 20 in any minute.
    group_interval: float = 3.5
    group_burst: int = 3
    bot_interval: float = 1 / 30
    bot_burst: int = 1
    max_wait: float = 10.0
    stale_after: float = 5.0
    """A waiting call not heard from for this long is dropped from the line."""
    poll: float = 0.25
    """The longest a waiting call sleeps between looks (keeps it fresh and responsive)."""


def _us(seconds: float) -> int:
    return int(seconds * US)


class Limiter:
    def __init__(self, redis: Redis, keys: Keys, bot_id: str, limits: Limits | None = None) -> None:
        self._redis = redis
        self.limits = limits or Limits()
        self._keys = keys
        self._tag = f"tgrl:{{{bot_id}}}"
        self._enqueue = redis.register_script(_ENQUEUE)
        self._try = redis.register_script(_TRY)
        self._pause = redis.register_script(_PAUSE)
        self._flood = redis.register_script(_FLOOD)

    def _key(self, name: str) -> str:
        return self._keys.global_key(f"{self._tag}:{name}")

    def user_key(self, user_id: str) -> str:
        # Hashed like the chat keys: the limiter's keys name no one.
        return self._key("f:" + hashlib.sha256(f"{self._tag}:{user_id}".encode()).hexdigest()[:24])

    def _chat_hash(self, chat_id: int) -> str:
        # Hashed: the limiter's keys keep no readable trace of who talks to whom.
        return hashlib.sha256(f"{self._tag}:{chat_id}".encode()).hexdigest()[:24]

    def _user_pause(self, user_id: str) -> str:
        return self._key("pu:" + self.user_key(user_id).rsplit(":", 1)[-1])

    async def acquire(self, user_id: str, chat_id: int | None, *, group: bool) -> float:
        """Wait for this user's turn to make one call (to `chat_id`, if any); return the seconds waited.

        `group` is for calls that post a message into a group (Telegram's 20 a minute).

        Raises TooManyRequests (with the expected wait) rather than waiting past `max_wait`.
        """
        started = time.monotonic()
        deadline = started + self.limits.max_wait
        try:
            ticket = await self._enter(user_id, chat_id, group=group, budget=self.limits.max_wait)
            try:
                while True:
                    code, wait_us = await self._attempt(ticket)
                    if code == 0:
                        break
                    if code == -2:  # dropped as stale while we slept too long: queue again
                        ticket = await self._enter(user_id, chat_id, group=group, budget=deadline - time.monotonic())
                        continue
                    wait = wait_us / US
                    remaining = deadline - time.monotonic()
                    if wait > remaining:
                        metrics.RATE_LIMIT_WAITS.labels("refused").inc()
                        raise TooManyRequests(
                            "rate_limited", "the Telegram rate limit would delay this call too long", retry_after=wait
                        )
                    await asyncio.sleep(min(max(wait, 0.002), self.limits.poll))
            except BaseException:
                with contextlib.suppress(RedisError):
                    await self._leave(ticket)
                raise
        except RedisError as exc:
            raise StorageError("rate limiter unavailable") from exc
        waited = time.monotonic() - started
        if waited > 0.01:
            metrics.RATE_LIMIT_WAITS.labels("group" if group else "chat").inc()
        metrics.RATE_LIMIT_WAIT_SECONDS.observe(waited)
        return waited

    async def _enter(self, user_id: str, chat_id: int | None, *, group: bool, budget: float) -> str:
        lim = self.limits
        chat = self._chat_hash(chat_id) if chat_id is not None else "-"
        result = await self._enqueue(
            keys=[
                self._key("w"),
                self._key("m"),
                self.user_key(user_id),
                self._key("vt"),
                self._key("seq"),
                self._key(f"c:{chat}"),
                self._key(f"g:{chat}"),
                self._user_pause(user_id),
            ],
            args=[
                _us(time.time()),
                _us(lim.chat_interval) if chat_id is not None else 0,
                _us(lim.chat_interval * (lim.chat_burst - 1)),
                _us(lim.group_interval) if group and chat_id is not None else 0,
                _us(lim.group_interval * (lim.group_burst - 1)),
                _us(max(0.0, budget)),
                int(max(0.0, budget) / lim.bot_interval),
                _us(lim.bot_interval),
                int(max(lim.max_wait, lim.group_interval * lim.group_burst, 60.0) * 2000),
            ],
        )
        if int(result[0]) == -1:
            metrics.RATE_LIMIT_WAITS.labels("refused").inc()
            raise TooManyRequests(
                "rate_limited",
                "the Telegram rate limit would delay this call too long",
                retry_after=int(result[1]) / US,
            )
        ticket = result[1]
        return ticket.decode() if isinstance(ticket, bytes) else str(ticket)

    async def _attempt(self, ticket: str) -> tuple[int, int]:
        lim = self.limits
        result = await self._try(
            keys=[self._key("w"), self._key("m"), self._key("bot"), self._key("vt"), self._key("pause")],
            args=[
                ticket,
                _us(time.time()),
                _us(lim.bot_interval),
                _us(lim.bot_interval * (lim.bot_burst - 1)),
                _us(lim.stale_after),
                200,
                60_000,
            ],
        )
        return int(result[0]), int(result[1])

    async def _leave(self, ticket: str) -> None:
        await self._redis.zrem(self._key("w"), ticket)
        await self._redis.hdel(self._key("m"), ticket)

    async def flood(self, user_id: str, chat_id: int | None, seconds: float, *, tenant: bool = True) -> str:
        """Telegram answered 429 with `retry_after` = `seconds`: pause what it was for.

        Returns what was paused: "chat", "user" (a call that names no chat) or "bot". `tenant`
        False (the gateway's own replies) never counts towards a bot-wide pause.
        """
        lim, now = self.limits, _us(time.time())
        seconds = min(max(seconds, 0.0), MAX_PAUSE)
        if chat_id is not None:
            # The chat's next slot moves past the pause (and past its burst: after a 429 it starts slow).
            target, extra = self._key(f"c:{self._chat_hash(chat_id)}"), _us(lim.chat_interval * (lim.chat_burst - 1))
        else:
            target, extra = self._user_pause(user_id), 0
        who = self.user_key(user_id).rsplit(":", 1)[-1] if tenant else ""
        try:
            bot = await self._flood(
                keys=[target, self._key("r429"), self._key("pause")],
                args=[now, now + _us(seconds), extra, who, _us(BOT_WIDE_WINDOW), BOT_WIDE_USERS],
            )
        except RedisError as exc:
            raise StorageError("rate limiter unavailable") from exc
        if int(bot):
            return "bot"
        return "chat" if chat_id is not None else "user"

    async def pause(self, seconds: float) -> None:
        """Telegram said 429: no process sends through this bot for `seconds`."""
        try:
            await self._pause(keys=[self._key("pause")], args=[_us(time.time() + min(seconds, MAX_PAUSE))])
        except RedisError as exc:
            raise StorageError("rate limiter unavailable") from exc

    async def paused_for(self) -> float:
        """Seconds left of a 429 pause (0 when none)."""
        try:
            raw = await self._redis.get(self._key("pause"))
        except RedisError as exc:
            raise StorageError("rate limiter unavailable") from exc
        return max(0.0, (int(raw or 0) - _us(time.time())) / US)

    async def forget_user(self, user_id: str) -> None:
        await self._redis.delete(self.user_key(user_id))
        await self._redis.delete(self._user_pause(user_id))
