"""Connection records: one Redis hash per user and provider, tokens sealed by the vault.

`{u:<id>}:oauth:<provider>` holds
- `account`     the address, vault-encrypted (context `connection|<provider>`)
- `tokens`      a JSON `Tokens` blob, vault-encrypted with AAD `ally-gateway/v1|<id>|<provider>|<account>`
- `status`, `reason`, `scopes`, `connected_at`, `updated_at` in the clear (no secrets, no addresses)
- `version`     bumped by every write; refreshes and status changes are compare-and-set on it, so a
                process that lost a race never overwrites what the winner stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from redis.asyncio import Redis

from foundation import batching
from foundation.clock import iso
from foundation.redis_keys import Keys
from foundation.vault import DataKey, Vault

PROVIDERS = ("google", "microsoft")
CONNECTED = "connected"
REAUTH_REQUIRED = "reauth_required"

# KEYS[1]: the record. ARGV[1]: expected version, then field/value pairs. Returns the new version or 0.
_CAS = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"""

_PUT = """
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"""


@dataclass(frozen=True, slots=True)
class Tokens:
    """What a provider granted. Lives in memory only; at rest it is one vault ciphertext."""

    access_token: str = field(repr=False)
    expires_at: float
    refresh_token: str | None = field(default=None, repr=False)
    scopes: tuple[str, ...] = ()
    msal_cache: str | None = field(default=None, repr=False)
    """Microsoft: msal's serialized per-user token cache (it holds the rotating refresh token)."""

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "access_token": self.access_token,
                "expires_at": self.expires_at,
                "refresh_token": self.refresh_token,
                "scopes": list(self.scopes),
                "msal_cache": self.msal_cache,
            }
        )

    @classmethod
    def loads(cls, raw: bytes) -> Tokens:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            access_token=data["access_token"],
            expires_at=float(data["expires_at"]),
            refresh_token=data.get("refresh_token"),
            scopes=tuple(data.get("scopes") or ()),
            msal_cache=data.get("msal_cache"),
        )

    def keeping_refresh_token_of(self, previous: Tokens | None) -> Tokens:
        """A grant that came back without a refresh token keeps the one already stored."""
        if self.refresh_token or previous is None or not previous.refresh_token:
            return self
        return replace(self, refresh_token=previous.refresh_token)


@dataclass(frozen=True, slots=True)
class Connection:
    user_id: str
    provider: str
    account: str
    status: str
    reason: str | None
    scopes: tuple[str, ...]
    connected_at: float
    updated_at: float
    version: int

    def public(self) -> dict[str, Any]:
        """The contract's view (`GET /v1/connections`): never a token."""
        return {
            "provider": self.provider,
            "account": self.account,
            "status": self.status,
            "scopes": list(self.scopes),
            "connected_at": iso(self.connected_at),
        }

    def detailed(self) -> dict[str, Any]:
        return {**self.public(), "reason": self.reason, "updated_at": iso(self.updated_at)}


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def _hgetall(key: str) -> batching.Call:
    return batching.command("HGETALL", key)


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """A hash from the flat field, value, field, value... list Redis answers HGETALL with."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class ConnectionStore:
    def __init__(self, redis: Redis, keys: Keys, vault: Vault) -> None:
        self._redis = redis
        self._keys = keys
        self._vault = vault
        self._cas = redis.register_script(_CAS)
        self._put = redis.register_script(_PUT)
        self._batch = batching.shared(redis)

    def key(self, user_id: str, provider: str) -> str:
        return self._keys.user_key(user_id, f"oauth:{provider}")

    def lock_key(self, user_id: str, provider: str) -> str:
        return self._keys.user_key(user_id, f"oauth:{provider}:lock")

    async def get(self, user_id: str, provider: str) -> tuple[Connection, bytes] | None:
        """The record and its still-sealed tokens, or None."""
        found = await self._read(user_id, provider)
        return (found[0], found[1]) if found is not None else None

    async def open(self, connection: Connection, sealed: bytes) -> Tokens:
        context = (connection.provider, connection.account)
        return Tokens.loads(await self._vault.decrypt(connection.user_id, context, sealed))

    async def load(self, user_id: str, provider: str) -> tuple[Connection, Tokens] | None:
        """The record and its tokens: one round trip (the record and the data key together)."""
        found = await self._read(user_id, provider)
        if found is None:
            return None
        connection, sealed, data_key = found
        return connection, Tokens.loads(data_key.decrypt((provider, connection.account), sealed))

    async def all(self, user_id: str) -> list[Connection]:
        *records, wrapped = await self._records(user_id, *PROVIDERS)
        found = [
            await self._parse(user_id, p, _fields(raw), wrapped) for p, raw in zip(PROVIDERS, records, strict=True)
        ]
        return [c for c, _, _ in filter(None, found)]

    async def _read(self, user_id: str, provider: str) -> tuple[Connection, bytes, DataKey] | None:
        raw, wrapped = await self._records(user_id, provider)
        return await self._parse(user_id, provider, _fields(raw), wrapped)

    async def _records(self, user_id: str, *providers: str) -> list[Any]:
        """The records, then the wrapped data key: one round trip, shared with the reads of other
        requests made in the same turn of the event loop (on one Redis; a cluster gets one each)."""
        reads = [_hgetall(self.key(user_id, p)) for p in providers]
        return await self._batch.run(*reads, self._vault.read_wrapped(user_id))

    async def _parse(
        self, user_id: str, provider: str, raw: dict[bytes, bytes], wrapped: bytes | None
    ) -> tuple[Connection, bytes, DataKey] | None:
        if not raw or b"version" not in raw or b"account" not in raw:
            return None
        data_key = await self._vault.opened(user_id, wrapped)
        connection = Connection(
            user_id=user_id,
            provider=provider,
            account=data_key.decrypt(("connection", provider), raw[b"account"]).decode(),
            status=_text(raw.get(b"status")) or CONNECTED,
            reason=_text(raw.get(b"reason")) or None,
            scopes=tuple(_text(raw.get(b"scopes")).split()),
            connected_at=float(_text(raw.get(b"connected_at")) or 0),
            updated_at=float(_text(raw.get(b"updated_at")) or 0),
            version=int(_text(raw.get(b"version")) or 0),
        )
        return connection, raw.get(b"tokens", b""), data_key

    async def put(self, user_id: str, provider: str, account: str, tokens: Tokens, *, connected_at: float) -> int:
        """Store a (re)connected grant whatever was there; return the new version."""
        now = time.time()
        data_key = await self._vault.data_key(user_id, create=True)
        fields: list[str | bytes] = [
            "account",
            data_key.encrypt(("connection", provider), account.encode()),
            "tokens",
            data_key.encrypt((provider, account), tokens.dumps()),
            "status",
            CONNECTED,
            "reason",
            "",
            "scopes",
            " ".join(tokens.scopes),
            "connected_at",
            repr(connected_at),
            "updated_at",
            repr(now),
        ]
        return int(
            await self._batch.call(batching.script(self._put, [self.key(user_id, provider)], fields, durable=True))
        )

    async def update_tokens(self, connection: Connection, tokens: Tokens) -> int:
        """Compare-and-set after a refresh; 0 when another process wrote first."""
        sealed = await self._vault.encrypt(
            connection.user_id, (connection.provider, connection.account), tokens.dumps()
        )
        fields: list[str | bytes] = [
            "tokens",
            sealed,
            "scopes",
            " ".join(tokens.scopes),
            "updated_at",
            repr(time.time()),
        ]
        return await self._compare_and_set(connection, fields)

    async def set_status(self, connection: Connection, status: str, reason: str | None) -> int:
        fields: list[str | bytes] = ["status", status, "reason", reason or "", "updated_at", repr(time.time())]
        return await self._compare_and_set(connection, fields)

    async def _compare_and_set(self, connection: Connection, fields: list[str | bytes]) -> int:
        key = self.key(connection.user_id, connection.provider)
        return int(await self._cas(keys=[key], args=[str(connection.version), *fields]))

    async def delete(self, user_id: str, provider: str) -> bool:
        return bool(await self._redis.delete(self.key(user_id, provider)))
