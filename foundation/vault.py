"""Envelope encryption: AES-256-GCM under a per-user data key, wrapped by a master key.

Stored forms:
- data key (field `dek` of the user record `{u:<id>}:user`):
                `kid` `.` nonce(12) || AESGCM(master[kid], dek, aad="ally-gateway/v1|<id>|dek")
- a ciphertext: nonce(12) || AESGCM(dek, plaintext, aad="ally-gateway/v1|<id>|<context...>")

Older versions kept the data key in its own key `{u:<id>}:dek`; the first read of a user's key
moves it into the record (`keys rotate` moves every user's). The key lives and dies with the
user record: deleting the record (erasure's first step) or the field makes every ciphertext of
that user unreadable (crypto-shredding), and nothing writes the field of a record that is gone
or being erased. Every
decryption reads the wrapped key from Redis (alone, or in the same round trip as the record it
opens), so a shredded key opens nothing from the moment it is deleted; only the unwrapping is
cached per process, by user and stored bytes.
Rotation re-wraps data keys under the active (first) master key while old kids
still decrypt, so the gateway keeps serving during it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

from foundation import batching, user_fields
from foundation.config import MasterKey
from foundation.errors import KeyShredded, VaultError
from foundation.redis_keys import Keys

log = logging.getLogger(__name__)

AAD_PREFIX = "ally-gateway/v1"
_NONCE = 12
CACHED_KEYS = 10_000
"""Opened data keys kept per process (least recently used go first)."""

# KEYS: the user record, the older data key. ARGV: a new wrapped key, or '' to make none.
# → the wrapped key: the record's, else the older key moved into the record, else the new one.
# Only for a user that exists, and no new key for one being erased: a late write must not bring
# a shredded user's key material back.
_KEY = user_fields.lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local stored = redis.call('HGET', KEYS[1], @dek)
if stored then return stored end
stored = redis.call('GET', KEYS[2])
if stored then
  redis.call('HSET', KEYS[1], @dek, stored)
  redis.call('DEL', KEYS[2])
  return stored
end
if ARGV[1] == '' or redis.call('HEXISTS', KEYS[1], @erasing) == 1 then return false end
redis.call('HSET', KEYS[1], @dek, ARGV[1])
return ARGV[1]
""")

# Replace the stored data key only if it is still the one we read (rotation vs. shredding).
_SWAP = user_fields.lua("""
if redis.call('HGET', KEYS[1], @dek) == ARGV[1] then
  redis.call('HSET', KEYS[1], @dek, ARGV[2])
  return 1
end
return 0
""")


def aad(user_id: str, *context: str) -> bytes:
    return "|".join((AAD_PREFIX, user_id, *context)).encode()


@dataclass(frozen=True, slots=True)
class DataKey:
    """One user's opened data key, as read for one request (it reads nothing itself)."""

    user_id: str
    aead: AESGCM = field(repr=False)

    def encrypt(self, context: Sequence[str], plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self.aead.encrypt(nonce, plaintext, aad(self.user_id, *context))

    def decrypt(self, context: Sequence[str], blob: bytes) -> bytes:
        try:
            return self.aead.decrypt(blob[:_NONCE], blob[_NONCE:], aad(self.user_id, *context))
        except InvalidTag as exc:
            raise VaultError("ciphertext does not open for this user and context") from exc


class Vault:
    def __init__(self, redis: Redis, keys: Keys, ring: Sequence[MasterKey]) -> None:
        if not ring:
            raise VaultError("the master key ring is empty")
        self._redis = redis
        self._keys = keys
        self._ring = {k.kid: AESGCM(k.key) for k in ring}
        self._active = ring[0].kid
        self._cache: OrderedDict[tuple[str, bytes], AESGCM] = OrderedDict()
        self._swap = redis.register_script(_SWAP)
        self._key = redis.register_script(_KEY)

    @property
    def active_kid(self) -> str:
        return self._active

    def _wrap(self, user_id: str, dek: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._ring[self._active].encrypt(nonce, dek, aad(user_id, "dek"))
        return self._active.encode() + b"." + nonce + sealed

    def _unwrap(self, user_id: str, stored: bytes) -> bytes:
        kid, _, blob = stored.partition(b".")
        master = self._ring.get(kid.decode(errors="replace"))
        if master is None:
            raise VaultError(f"data key wrapped by unknown kid {kid.decode(errors='replace')!r}")
        try:
            return master.decrypt(blob[:_NONCE], blob[_NONCE:], aad(user_id, "dek"))
        except InvalidTag as exc:
            raise VaultError("data key does not open under its master key") from exc

    def read_wrapped(self, user_id: str) -> batching.Call:
        """The read of the user's wrapped data key, for a batch; hand its answer to `opened`.

        A caller reads a record and the key that opens it in one round trip this way."""
        return batching.command("HGET", self._keys.user(user_id), user_fields.DEK)

    async def opened(self, user_id: str, wrapped: bytes | None) -> DataKey:
        """The data key from what `read_wrapped` answered; KeyShredded when there is none."""
        if wrapped is None:
            wrapped = await self._stored(user_id)  # still in the older layout, or none
        if wrapped is None:
            raise KeyShredded("no data key for this user")
        return DataKey(user_id, self._open(user_id, wrapped))

    async def data_key(self, user_id: str, *, create: bool = False) -> DataKey:
        """The user's data key, read once (and made first if `create` and there is none)."""
        wrapped: bytes | None = await self._redis.hget(self._keys.user(user_id), user_fields.DEK)
        if wrapped is None and create:
            wrapped = await self._stored(user_id, self._wrap(user_id, AESGCM.generate_key(256)))
            if wrapped is None:
                raise KeyShredded("the user is gone or being erased")
        return await self.opened(user_id, wrapped)

    async def _stored(self, user_id: str, new: bytes = b"") -> bytes | None:
        """The wrapped key after moving an older layout's into the record (or storing `new`)."""
        keys = [self._keys.user(user_id), self._keys.dek(user_id)]
        stored: bytes | None = await self._key(keys=keys, args=[new])
        return stored

    def _open(self, user_id: str, wrapped: bytes) -> AESGCM:
        """Unwrap once per process: the cache is keyed by the user and the bytes just read from
        Redis, so it only answers for the key Redis holds now (a key made after shredding is new
        random bytes under a new nonce, and a key copied to another user opens nothing for them)."""
        cache_key = (user_id, wrapped)
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        aead = AESGCM(self._unwrap(user_id, wrapped))
        self._cache[cache_key] = aead
        if len(self._cache) > CACHED_KEYS:
            self._cache.popitem(last=False)
        return aead

    async def encrypt(self, user_id: str, context: Sequence[str], plaintext: bytes) -> bytes:
        return (await self.data_key(user_id, create=True)).encrypt(context, plaintext)

    async def decrypt(self, user_id: str, context: Sequence[str], blob: bytes) -> bytes:
        return (await self.data_key(user_id)).decrypt(context, blob)

    def seal_global(self, context: Sequence[str], plaintext: bytes) -> bytes:
        """Encrypt under the active master key itself: for records that must outlive a user's data
        key (a revocation still owed to a provider after erasure). Stored as `kid.nonce||ct`; the AAD
        names `*` instead of a user id, which no user id can be."""
        nonce = os.urandom(_NONCE)
        sealed = self._ring[self._active].encrypt(nonce, plaintext, aad("*", *context))
        return self._active.encode() + b"." + nonce + sealed

    def open_global(self, context: Sequence[str], stored: bytes) -> bytes:
        kid, _, blob = stored.partition(b".")
        master = self._ring.get(kid.decode(errors="replace"))
        if master is None:
            raise VaultError(f"record sealed by unknown kid {kid.decode(errors='replace')!r}")
        try:
            return master.decrypt(blob[:_NONCE], blob[_NONCE:], aad("*", *context))
        except InvalidTag as exc:
            raise VaultError("record does not open under its master key") from exc

    async def shred(self, user_id: str) -> None:
        await self._redis.hdel(self._keys.user(user_id), user_fields.DEK)
        await self._redis.delete(self._keys.dek(user_id))
        for cache_key in [k for k in self._cache if k[0] == user_id]:
            del self._cache[cache_key]

    async def rotate(self, user_ids: Sequence[str]) -> int:
        """Re-wrap these users' data keys under the active kid (moving any still in the older layout
        into the user record first); return how many changed."""
        changed = 0
        for user_id in user_ids:
            stored = await self._stored(user_id)
            if stored is None or stored.startswith(self._active.encode() + b"."):
                continue
            rewrapped = self._wrap(user_id, self._unwrap(user_id, stored))
            if await self._swap(keys=[self._keys.user(user_id)], args=[stored, rewrapped]):
                changed += 1
        return changed

    async def status(self, user_ids: Sequence[str]) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for user_id in user_ids:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(self._keys.user(user_id), user_fields.DEK)
            pipe.get(self._keys.dek(user_id))
            stored = next(filter(None, await pipe.execute()), None)
            if stored is not None:
                counts[stored.partition(b".")[0].decode(errors="replace")] += 1
        return dict(counts)
