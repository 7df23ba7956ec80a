"""Which Telegram chat belongs to which user, link codes, and what a user's server may name.

Keys:
- `tg:chat:<chat_id>` (global) → the user id the chat routes to;
- `{u:<id>}:tg:chats` hash chat_id → `{"type", "linked_at", "via"}`, and its field `private` → the
  default private chat (chat ids are integers, so no chat's field can be named `private`). Older
  versions kept the default in its own key `{u:<id>}:tg:private`; it is moved into the hash the
  first time it is read, and wins over the field while it exists (only an older writer makes it);
- `tg:code:<sha256(code)>` (global, 15 min) → `{user, used_by}`; `{u:<id>}:tg:codes` the user's
  outstanding code hashes (so erasure finds them);
- `{u:<id>}:tg:files` / `{u:<id>}:tg:cbq`: SHA-256 prefixes of the file ids and callback query
  ids this user's chats produced, the only ones its server may use. Hashes, not ids: the
  gateway keeps no usable reference to anyone's content.
A global key and a user key live in different cluster slots, so updates are ordered to be
safe to repeat rather than atomic: the global mapping is the authority.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from foundation import batching
from foundation.batching import command
from foundation.clock import iso
from foundation.redis_keys import Keys
from routing.handoff import Linked

CODE_TTL = 15 * 60
FILES_KEPT = 30 * 24 * 3600
FILES_MAX = 20_000
CALLBACKS_KEPT = 24 * 3600
PRIVATE = "private"
ROUTES_CACHED = 100_000
"""Chat → user routes each process keeps (about 100 bytes each)."""
"""The field of `{u:<id>}:tg:chats` that names the default private chat."""
LEGACY_PRIVATE = "tg:private"

Kind = Literal["files", "cbq"]

# KEYS: code. ARGV: chat id. → {state, user}: 1 fresh, 2 replay by the same chat, 0 unknown, 3 used elsewhere.
_REDEEM = """
local user = redis.call('HGET', KEYS[1], 'user')
if not user then return {0, ''} end
local used = redis.call('HGET', KEYS[1], 'used_by')
if not used then
  redis.call('HSET', KEYS[1], 'used_by', ARGV[1])
  return {1, user}
end
if used == ARGV[1] then return {2, user} end
return {3, ''}
"""
# KEYS: the chats hash, the older default-chat key. → the default private chat, moved into the hash.
_DEFAULT = """
local legacy = redis.call('GET', KEYS[2])
if legacy then
  redis.call('HSET', KEYS[1], 'private', legacy)
  redis.call('DEL', KEYS[2])
  return legacy
end
return redis.call('HGET', KEYS[1], 'private')
"""
# KEYS: the user's files or callback-query set. ARGV: now, kept (s), most, then the members.
_REMEMBER = """
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""
# KEYS: chat mapping. ARGV: user. Deletes the mapping only if it still names that user.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ChatInfo:
    chat_id: int
    type: str
    linked_at: str
    via: str

    @property
    def is_group(self) -> bool:
        return self.type != "private"

    def as_json(self) -> dict[str, Any]:
        return {"chat_id": self.chat_id, "type": self.type, "linked_at": self.linked_at, "via": self.via}


@dataclass(frozen=True, slots=True)
class Redemption:
    state: Literal["fresh", "replay", "unknown", "used"]
    user_id: str = ""


class Chats:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._batch = batching.shared(redis)
        self._redeem = redis.register_script(_REDEEM)
        self._release = redis.register_script(_RELEASE)
        self._default = redis.register_script(_DEFAULT)
        self._remember = redis.register_script(_REMEMBER)
        self._routes: dict[int, str] = {}
        """Chat → user as last read or linked here, for routing only: the hand-over checks that
        the chat is still in the user's own `tg:chats` (`linked`), so a stale entry queues nothing."""

    def _chat(self, chat_id: int) -> str:
        return self._keys.global_key(f"tg:chat:{chat_id}")

    def _chats(self, user_id: str) -> str:
        return self._keys.user_key(user_id, "tg:chats")

    async def owner(self, chat_id: int) -> str | None:
        # Every update asks this first: concurrent webhooks share one round trip.
        key = self._chat(chat_id)
        raw = await self._batch.call(command("GET", key))
        return raw.decode() if raw is not None else None

    def cached_owner(self, chat_id: int) -> str | None:
        """The user this process last saw `chat_id` routed to; use only with `linked`."""
        return self._routes.get(chat_id)

    async def routed_owner(self, chat_id: int) -> str | None:
        """As `owner`, and remembered for `cached_owner`."""
        owner = await self.owner(chat_id)
        self._routes.pop(chat_id, None)
        if owner is not None:
            if len(self._routes) >= ROUTES_CACHED:
                del self._routes[next(iter(self._routes))]  # the oldest entry
            self._routes[chat_id] = owner
        return owner

    def forget_route(self, chat_id: int) -> None:
        self._routes.pop(chat_id, None)

    @staticmethod
    def linked(chat_id: int) -> Linked:
        """The hand-over's check that `chat_id` is (still) one of the user's linked chats."""
        return Linked("tg:chats", str(chat_id))

    async def link(self, user_id: str, chat_id: int, chat_type: str, via: str) -> str | None:
        """Route `chat_id` to `user_id`; return the user it routed to before, if another."""
        self._routes.pop(chat_id, None)
        previous = await self._redis.set(self._chat(chat_id), user_id, get=True)
        before = previous.decode() if previous is not None else None
        if before is not None and before != user_id:
            await self._drop_from_user(before, chat_id)
        info = {"type": chat_type, "linked_at": iso(time.time()), "via": via}
        chats = self._chats(user_id)
        fields: dict[str, bytes | str] = {}
        if before != user_id or await self._redis.hget(chats, str(chat_id)) is None:
            fields[str(chat_id)] = orjson.dumps(info)
        if chat_type == "private":
            fields[PRIVATE] = str(chat_id)
        if fields:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(chats, mapping=fields)
            if PRIVATE in fields:
                pipe.delete(self._keys.user_key(user_id, LEGACY_PRIVATE))
            await pipe.execute()
        return before if before != user_id else None

    async def unlink(self, user_id: str, chat_id: int) -> bool:
        self._routes.pop(chat_id, None)
        released = bool(await self._release(keys=[self._chat(chat_id)], args=[user_id]))
        await self._drop_from_user(user_id, chat_id)
        return released

    async def _drop_from_user(self, user_id: str, chat_id: int) -> None:
        chats = self._chats(user_id)
        await self._redis.hdel(chats, str(chat_id))
        if await self.private_chat(user_id) == chat_id:
            await self._redis.hdel(chats, PRIVATE)
            # Another linked private chat (a second Telegram account) becomes the default.
            for info in (await self.of_user(user_id)).values():
                if info.type == "private":
                    await self._redis.hset(chats, PRIVATE, str(info.chat_id))
                    break

    async def of_user(self, user_id: str) -> dict[int, ChatInfo]:
        raw = await self._redis.hgetall(self._chats(user_id))
        out: dict[int, ChatInfo] = {}
        for key, value in raw.items():
            if key == PRIVATE.encode():
                continue
            data = orjson.loads(value)
            chat_id = int(key)
            out[chat_id] = ChatInfo(chat_id, data["type"], data["linked_at"], data["via"])
        return out

    async def chat_of(self, user_id: str, chat_id: int) -> ChatInfo | None:
        """The chat's record if it is linked to this user now (the global mapping decides)."""
        if await self.owner(chat_id) != user_id:
            return None
        raw = await self._redis.hget(self._chats(user_id), str(chat_id))
        if raw is None:
            return None
        data = orjson.loads(raw)
        return ChatInfo(chat_id, data["type"], data["linked_at"], data["via"])

    async def private_chat(self, user_id: str) -> int | None:
        keys = [self._chats(user_id), self._keys.user_key(user_id, LEGACY_PRIVATE)]
        raw = await self._default(keys=keys)
        return int(raw) if raw is not None else None

    async def new_code(self, user_id: str) -> tuple[str, float]:
        code = secrets.token_urlsafe(24)  # 32 characters of A-Za-z0-9_-, as deep links allow
        hashed = _digest(code)
        await self._redis.hset(self._keys.global_key(f"tg:code:{hashed}"), "user", user_id)
        await self._redis.expire(self._keys.global_key(f"tg:code:{hashed}"), CODE_TTL)
        codes = self._keys.user_key(user_id, "tg:codes")
        now = time.time()
        await self._redis.zadd(codes, {hashed: now})
        await self._redis.zremrangebyscore(codes, "-inf", now - CODE_TTL)
        await self._redis.expire(codes, CODE_TTL)
        return code, now + CODE_TTL

    async def redeem(self, code: str, chat_id: int) -> Redemption:
        key = self._keys.global_key(f"tg:code:{_digest(code)}")
        state, user = await self._batch.call(batching.script(self._redeem, [key], [str(chat_id)], durable=True))
        names = {0: "unknown", 1: "fresh", 2: "replay", 3: "used"}
        return Redemption(names[int(state)], user.decode() if isinstance(user, bytes) else str(user))  # type: ignore[arg-type]

    async def remember(self, user_id: str, kind: Kind, ids: Iterable[str]) -> None:
        members = sorted({_digest(i) for i in ids if i})
        if not members:
            return
        key = self._keys.user_key(user_id, f"tg:{kind}")
        kept = FILES_KEPT if kind == "files" else CALLBACKS_KEPT
        # One batched call: made beside a hand-over, it shares its round trip and goes first.
        args = [repr(time.time()), kept, FILES_MAX, *members]
        await self._batch.call(batching.script(self._remember, [key], args))

    async def knows(self, user_id: str, kind: Kind, value: str) -> bool:
        score = await self._redis.zscore(self._keys.user_key(user_id, f"tg:{kind}"), _digest(value))
        kept = FILES_KEPT if kind == "files" else CALLBACKS_KEPT
        return score is not None and float(score) > time.time() - kept

    async def forget_user(self, user_id: str) -> None:
        """Erasure: release every global key that names the user (its own keys go with its tag)."""
        for chat_id in await self.of_user(user_id):
            await self._release(keys=[self._chat(chat_id)], args=[user_id])
        for hashed in await self._redis.zrange(self._keys.user_key(user_id, "tg:codes"), 0, -1):
            await self._redis.delete(self._keys.global_key(f"tg:code:{hashed.decode()}"))

    async def purge(self, user_id: str) -> None:
        """Delete every Telegram key under the user's tag (a late write raced its erasure)."""
        names = ("tg:chats", LEGACY_PRIVATE, "tg:codes", "tg:files", "tg:cbq")
        await self._redis.delete(*(self._keys.user_key(user_id, n) for n in names))
