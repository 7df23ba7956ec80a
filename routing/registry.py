"""The user registry: each user's dedicated server, its key and its credentials.

Server tokens are `ast.<user_id>.<secret>` and stored only as SHA-256 hashes;
webhook secrets are stored encrypted in the vault. Rotation keeps the previous
token and secret valid for `OVERLAP` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from redis.asyncio import Redis

from gateway.errors import NotFound
from gateway.types import USER_ID, UserId
from oauth.vault import Vault
from routing.keys import Keys
from routing.sealing import parse_public_key
from routing.signing import new_secret

OVERLAP = 24 * 3600
TARGET_FIELDS = ("server_url", "secret", "old_secret", "old_until")
_SECRET_CONTEXT = ("webhook_secret",)


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


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


class Registry:
    def __init__(self, redis: Redis, keys: Keys, vault: Vault) -> None:
        self._redis = redis
        self._keys = keys
        self._vault = vault
        self._pubkeys: dict[str, tuple[bytes, X25519PublicKey]] = {}
        self._secrets: dict[tuple[str, bytes], str] = {}

    async def put(self, user_id: str, server_url: str, server_public_key: str) -> tuple[User, Credentials | None]:
        """Create the user (returning fresh credentials) or update its server (returning none)."""
        parse_public_key(server_public_key)
        key = self._keys.user(user_id)
        now = repr(time.time())
        fresh = self._new_credentials(user_id)
        # Whoever sets the token hash first creates the user; a create interrupted before the
        # secret was stored is completed by the next PUT.
        created = bool(await self._redis.hsetnx(key, "token_hash", _hash(fresh.server_token)))
        if not created and not await self._redis.hexists(key, "secret"):
            await self._redis.hset(key, "token_hash", _hash(fresh.server_token))
            created = True
        fields: dict[str, str | bytes] = {
            "server_url": server_url,
            "server_public_key": server_public_key,
            "updated_at": now,
        }
        credentials = None
        if created:
            credentials = fresh
            fields["created_at"] = now
            fields["secret"] = await self._vault.encrypt(user_id, _SECRET_CONTEXT, fresh.webhook_secret.encode())
            await self._redis.sadd(self._keys.users, user_id)
        await self._redis.hset(key, mapping=fields)
        user = await self.get(user_id)
        assert user is not None
        return user, credentials

    @staticmethod
    def _new_credentials(user_id: str) -> Credentials:
        return Credentials(f"ast.{user_id}.{secrets.token_urlsafe(32)}", new_secret())

    async def get(self, user_id: str) -> User | None:
        values = await self._redis.hmget(
            self._keys.user(user_id), ["server_url", "server_public_key", "created_at", "updated_at"]
        )
        if values[0] is None:
            return None
        return User(user_id, _s(values[0]), _s(values[1]), float(_s(values[2]) or 0), float(_s(values[3]) or 0))

    async def require(self, user_id: str) -> User:
        user = await self.get(user_id)
        if user is None:
            raise NotFound("user_not_found", "no such user")
        return user

    async def exists(self, user_id: str) -> bool:
        return bool(await self._redis.hexists(self._keys.user(user_id), "server_url"))

    async def public_key(self, user_id: str) -> X25519PublicKey:
        return (await self.sealing_key(user_id))[1]

    async def sealing_key(self, user_id: str) -> tuple[bytes, X25519PublicKey]:
        """The server's key as stored (base64url) and parsed, read from Redis now."""
        raw = await self._redis.hget(self._keys.user(user_id), "server_public_key")
        if raw is None:
            raise NotFound("user_not_found", "no such user")
        cached = self._pubkeys.get(user_id)
        if cached is not None and cached[0] == raw:
            return cached
        entry = (raw, parse_public_key(raw.decode()))
        if len(self._pubkeys) > 100_000:
            self._pubkeys.clear()
        self._pubkeys[user_id] = entry
        return entry

    def cached_sealing_key(self, user_id: str) -> tuple[bytes, X25519PublicKey] | None:
        """The key this process last read for the user, if any. It may be stale: whoever uses it
        must have Redis compare it with the stored key in the same atomic step as the write."""
        return self._pubkeys.get(user_id)

    async def rotate(self, user_id: str) -> Credentials:
        key = self._keys.user(user_id)
        current = await self._redis.hmget(key, ["server_url", "token_hash", "secret"])
        if current[0] is None:
            raise NotFound("user_not_found", "no such user")
        credentials = self._new_credentials(user_id)
        until = repr(time.time() + OVERLAP)
        await self._redis.hset(
            key,
            mapping={
                "token_hash": _hash(credentials.server_token),
                "secret": await self._vault.encrypt(user_id, _SECRET_CONTEXT, credentials.webhook_secret.encode()),
                "old_token_hash": current[1] or b"",
                "old_secret": current[2] or b"",
                "old_until": until,
            },
        )
        return credentials

    async def authenticate(self, token: str) -> UserId | None:
        """The user a server token belongs to, or None; constant-time on the secret part."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "ast" or not USER_ID.match(parts[1]):
            return None
        user_id = parts[1]
        stored = await self._redis.hmget(
            self._keys.user(user_id), ["token_hash", "old_token_hash", "old_until", "erasing"]
        )
        if stored[3] is not None:
            # Erasure was accepted: from that moment the user's server reaches nothing (no token
            # leases, no sends), even while the background steps still run.
            return None
        offered = _hash(token)
        if stored[0] is not None and hmac.compare_digest(offered, _s(stored[0])):
            return UserId(user_id)
        if stored[1] and hmac.compare_digest(offered, _s(stored[1])) and float(_s(stored[2]) or 0) > time.time():
            return UserId(user_id)
        return None

    async def target(self, user_id: str) -> Target | None:
        return await self.target_from(user_id, await self._redis.hmget(self._keys.user(user_id), TARGET_FIELDS))

    async def target_from(self, user_id: str, values: Sequence[bytes | None]) -> Target | None:
        """The target from the user record's `TARGET_FIELDS`, read by the caller (delivery reads
        them in the same script that opens a transaction)."""
        if values[0] is None or values[1] is None:
            return None
        found = [await self._secret(user_id, values[1])]
        if values[2] and float(_s(values[3]) or 0) > time.time():
            found.append(await self._secret(user_id, values[2]))
        return Target(_s(values[0]), tuple(found))

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
