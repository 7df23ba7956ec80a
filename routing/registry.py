"""The user registry: each user's dedicated server, its key and its credentials.

Server tokens are `ast.<user_id>.<secret>` and stored only as SHA-256 hashes;
webhook secrets are stored encrypted in the vault. Rotation keeps the previous
token and secret valid for an overlap (`OVERLAP` seconds unless told otherwise; 0 revokes
them at once, for a leaked credential).

A key change records where the old key's run of the queue ends in the record's `key_history`
(`routing/key_history.py` says how, and reads it back).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson
from redis.asyncio import Redis

from foundation import user_fields as record
from foundation.errors import NotFound, StorageError
from foundation.redis_keys import Keys
from foundation.types import USER_ID, UserId
from foundation.vault import Vault
from routing.key_history import KEY_STATE, STREAM, KeyState, KeyStatus
from routing.sealing import ServerKey, decode_public_key, kid_of, parse_public_key, suite_of
from routing.signing import new_secret

OVERLAP = 24 * 3600
TARGET_FIELDS = (record.SERVER_URL, record.SECRET, record.OLD_SECRET, record.OLD_UNTIL)
_SECRET_CONTEXT = ("webhook_secret",)

# KEYS: user record, queue, counters. ARGV: the key expected in the record now ('' for none), the
# new key, the current key's kid and suite, now, `key_history` without drained runs (JSON), then
# field/value pairs to set. Refused (0) when the key changed since the caller read it.
_PUT = record.lua(
    STREAM
    + """
local current = redis.call('HGET', KEYS[1], @server_public_key) or ''
if current ~= ARGV[1] then return 0 end
if current ~= '' and current ~= ARGV[2] then
  local _, added, _, last = stream(KEYS[2], KEYS[3])
  local history = cjson.decode(ARGV[6])
  history[#history + 1] = {kid = ARGV[3], suite = ARGV[4], until_added = tostring(added), until_id = last,
    replaced_at = ARGV[5]}
  redis.call('HSET', KEYS[1], @key_history, cjson.encode(history))
end
redis.call('HSET', KEYS[1], @server_public_key, ARGV[2], unpack(ARGV, 7))
return 1
"""
)


TOKEN_FIELDS = (record.TOKEN_HASH, record.OLD_TOKEN_HASH, record.OLD_UNTIL, record.ERASING)


class StoredTokens(NamedTuple):
    """What authenticates a server token: the user record's `TOKEN_FIELDS`, by name."""

    token_hash: str
    old_token_hash: str
    old_until: float
    erasing: bool

    @classmethod
    def parse(cls, values: Sequence[bytes | None]) -> StoredTokens:
        if len(values) != len(TOKEN_FIELDS):
            raise StorageError(f"read {len(values)} token fields, not {len(TOKEN_FIELDS)}")
        token_hash, old_token_hash, old_until, erasing = values
        return cls(_text(token_hash), _text(old_token_hash), float(_text(old_until) or 0), erasing is not None)


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    server_url: str
    server_public_key: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Credentials:
    server_token: str
    webhook_secret: str


@dataclass(frozen=True, slots=True)
class Target:
    """What delivery needs: where to send, and every webhook secret currently valid."""

    server_url: str
    secrets: tuple[str, ...]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def _named(names: Sequence[str], values: Sequence[bytes | None]) -> dict[str, bytes | None]:
    """An `HMGET`'s reply by field name (the reply is in the order the names were asked)."""
    return dict(zip(names, values, strict=True))


class Registry:
    def __init__(self, redis: Redis, keys: Keys, vault: Vault) -> None:
        self._redis = redis
        self._keys = keys
        self._vault = vault
        self._pubkeys: dict[str, tuple[bytes, ServerKey]] = {}
        self._secrets: dict[tuple[str, bytes], str] = {}
        self._put_script = redis.register_script(_PUT)
        self._key_state_script = redis.register_script(KEY_STATE)

    async def put(self, user_id: str, server_url: str, server_public_key: str) -> tuple[User, Credentials | None]:
        """Create the user (returning fresh credentials) or update its server (returning none)."""
        server_key = parse_public_key(server_public_key)
        key = self._keys.user(user_id)
        now = repr(time.time())
        fresh = self._new_credentials(user_id)
        # Whoever sets the token hash first creates the user; a create interrupted before the
        # secret was stored is completed by the next PUT.
        created = bool(await self._redis.hsetnx(key, record.TOKEN_HASH, _hash(fresh.server_token)))
        if not created and not await self._redis.hexists(key, record.SECRET):
            await self._redis.hset(key, record.TOKEN_HASH, _hash(fresh.server_token))
            created = True
        fields: dict[str, str | bytes] = {record.SERVER_URL: server_url, record.UPDATED_AT: now}
        credentials = None
        if created:
            credentials = fresh
            fields[record.CREATED_AT] = now
            fields[record.SECRET] = await self._vault.encrypt(user_id, _SECRET_CONTEXT, fresh.webhook_secret.encode())
            await self._redis.sadd(self._keys.users, user_id)
        await self._set_key(user_id, server_public_key.strip(), server_key, fields)
        user = await self.get(user_id)
        assert user is not None
        return user, credentials

    async def _set_key(self, user_id: str, text: str, server_key: ServerKey, fields: dict[str, str | bytes]) -> None:
        """Store the key with `fields`; a change of key records where the old key's run ends."""
        keys = [self._keys.user(user_id), self._keys.queue(user_id), self._keys.counters(user_id)]
        pairs = [v for item in fields.items() for v in item]
        for _ in range(5):
            state = await self._key_state(user_id)
            old = decode_public_key(state.current) if state.current else b""
            old_kid, old_suite = (kid_of(old), suite_of(old)) if old else ("", "")
            # Runs that no queued event needs any more are dropped here, so the history stays as
            # short as the number of key changes within one hold period.
            live = [run for run, n in zip(state.history, state.held(), strict=True) if n > 0]
            args = [state.current, text, old_kid, old_suite, repr(time.time()), orjson.dumps(live)]
            if await self._put_script(keys=keys, args=[*args, *pairs]):
                self._pubkeys[user_id] = (text.encode(), server_key)
                return
        raise StorageError("the server key kept changing while it was being set")

    async def _key_state(self, user_id: str) -> KeyState:
        keys = [self._keys.user(user_id), self._keys.queue(user_id), self._keys.counters(user_id)]
        return KeyState.parse(await self._key_state_script(keys=keys))

    async def key_status(self, user_id: str) -> KeyStatus:
        """The key in use and the older ones that queued events still need (contract §9.6)."""
        state = await self._key_state(user_id)
        if not state.current:
            raise NotFound("user_not_found", "no such user")
        return state.status()

    @staticmethod
    def _new_credentials(user_id: str) -> Credentials:
        return Credentials(f"ast.{user_id}.{secrets.token_urlsafe(32)}", new_secret())

    async def get(self, user_id: str) -> User | None:
        names = (record.SERVER_URL, record.SERVER_PUBLIC_KEY, record.CREATED_AT, record.UPDATED_AT)
        found = _named(names, await self._redis.hmget(self._keys.user(user_id), names))
        if found[record.SERVER_URL] is None:
            return None
        return User(
            user_id,
            _text(found[record.SERVER_URL]),
            _text(found[record.SERVER_PUBLIC_KEY]),
            float(_text(found[record.CREATED_AT]) or 0),
            float(_text(found[record.UPDATED_AT]) or 0),
        )

    async def require(self, user_id: str) -> User:
        user = await self.get(user_id)
        if user is None:
            raise NotFound("user_not_found", "no such user")
        return user

    async def exists(self, user_id: str) -> bool:
        return bool(await self._redis.hexists(self._keys.user(user_id), record.SERVER_URL))

    async def public_key(self, user_id: str) -> ServerKey:
        return (await self.sealing_key(user_id))[1]

    async def sealing_key(self, user_id: str) -> tuple[bytes, ServerKey]:
        """The server's key as stored (base64url) and parsed, read from Redis now."""
        raw = await self._redis.hget(self._keys.user(user_id), record.SERVER_PUBLIC_KEY)
        if raw is None:
            raise NotFound("user_not_found", "no such user")
        cached = self._pubkeys.get(user_id)
        if cached is not None and cached[0] == raw:
            return cached
        entry = (raw, parse_public_key(raw.decode(), probe=False))
        if len(self._pubkeys) > 100_000:
            self._pubkeys.clear()
        self._pubkeys[user_id] = entry
        return entry

    def cached_sealing_key(self, user_id: str) -> tuple[bytes, ServerKey] | None:
        """The key this process last read for the user, if any. It may be stale: whoever uses it
        must have Redis compare it with the stored key in the same atomic step as the write."""
        return self._pubkeys.get(user_id)

    async def rotate(self, user_id: str, overlap: float = OVERLAP) -> Credentials:
        """New credentials; the current ones stay valid `overlap` more seconds (0: not at all)."""
        key = self._keys.user(user_id)
        names = (record.SERVER_URL, record.TOKEN_HASH, record.SECRET)
        current = _named(names, await self._redis.hmget(key, names))
        if current[record.SERVER_URL] is None:
            raise NotFound("user_not_found", "no such user")
        credentials = self._new_credentials(user_id)
        # Revoked at once: the old hash and secret are not even kept.
        keep = overlap > 0
        await self._redis.hset(
            key,
            mapping={
                record.TOKEN_HASH: _hash(credentials.server_token),
                record.SECRET: await self._vault.encrypt(user_id, _SECRET_CONTEXT, credentials.webhook_secret.encode()),
                record.OLD_TOKEN_HASH: (current[record.TOKEN_HASH] or b"") if keep else b"",
                record.OLD_SECRET: (current[record.SECRET] or b"") if keep else b"",
                record.OLD_UNTIL: repr(time.time() + overlap),
            },
        )
        return credentials

    async def authenticate(self, token: str) -> UserId | None:
        """The user a server token belongs to, or None; constant-time on the secret part."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "ast" or not USER_ID.match(parts[1]):
            return None
        user_id = parts[1]
        stored = StoredTokens.parse(await self._redis.hmget(self._keys.user(user_id), TOKEN_FIELDS))
        if stored.erasing:
            # Erasure was accepted: from that moment the user's server reaches nothing (no token
            # leases, no sends), even while the background steps still run.
            return None
        offered = _hash(token)
        if stored.token_hash and hmac.compare_digest(offered, stored.token_hash):
            return UserId(user_id)
        if stored.old_token_hash and hmac.compare_digest(offered, stored.old_token_hash):
            return UserId(user_id) if stored.old_until > time.time() else None
        return None

    async def target(self, user_id: str) -> Target | None:
        return await self.target_from(user_id, await self._redis.hmget(self._keys.user(user_id), TARGET_FIELDS))

    async def target_from(self, user_id: str, values: Sequence[bytes | None]) -> Target | None:
        """The target from the user record's `TARGET_FIELDS`, read by the caller (delivery reads
        them in the same script that opens a transaction)."""
        fields = _named(TARGET_FIELDS, values)
        url, secret, old_secret = fields[record.SERVER_URL], fields[record.SECRET], fields[record.OLD_SECRET]
        if url is None or secret is None:
            return None
        found = [await self._secret(user_id, secret)]
        if old_secret and float(_text(fields[record.OLD_UNTIL]) or 0) > time.time():
            found.append(await self._secret(user_id, old_secret))
        return Target(_text(url), tuple(found))

    async def _secret(self, user_id: str, sealed: bytes) -> str:
        """The webhook secret in `sealed`, opened once per process: every delivery needs it, and
        opening it costs a Redis round trip for the data key. A rotated secret is a new ciphertext,
        so it is never served stale; a shredded data key only matters to a user who is gone."""
        cached = self._secrets.get((user_id, sealed))
        if cached is not None:
            return cached
        secret = (await self._vault.decrypt(user_id, _SECRET_CONTEXT, sealed)).decode()
        if len(self._secrets) > 100_000:
            self._secrets.clear()
        self._secrets[(user_id, sealed)] = secret
        return secret

    async def user_ids(self) -> list[str]:
        return sorted(m.decode() for m in await self._redis.smembers(self._keys.users))

    async def forget(self, user_id: str) -> None:
        await self._redis.srem(self._keys.users, user_id)
        self._pubkeys.pop(user_id, None)
        for key in [k for k in self._secrets if k[0] == user_id]:
            del self._secrets[key]
