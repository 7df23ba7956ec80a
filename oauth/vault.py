"""Envelope encryption: AES-256-GCM under a per-user data key, wrapped by a master key.

Stored forms:
- data key (`{u:<id>}:dek`): `kid` `.` nonce(12) || AESGCM(master[kid], dek, aad="ally-gateway/v1|<id>|dek")
- a ciphertext:              nonce(12) || AESGCM(dek, plaintext, aad="ally-gateway/v1|<id>|<context...>")

Deleting the data key makes every ciphertext of that user unreadable (crypto-shredding).
Rotation re-wraps data keys under the active (first) master key while old kids
still decrypt, so the gateway keeps serving during it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

from gateway.config import MasterKey
from gateway.errors import KeyShredded, VaultError
from routing.keys import Keys

log = logging.getLogger(__name__)

AAD_PREFIX = "ally-gateway/v1"
_NONCE = 12

# Store a new data key unless one exists, and only for a user that exists and is not being
# erased: a late write must not bring a shredded user's key material back.
_CREATE = """
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('HEXISTS', KEYS[2], 'erasing') == 1 then return -1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 1 end
return 0
"""

# Replace the stored data key only if it is still the one we read (rotation vs. shredding).
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def aad(user_id: str, *context: str) -> bytes:
    return "|".join((AAD_PREFIX, user_id, *context)).encode()


class Vault:
    def __init__(self, redis: Redis, keys: Keys, ring: Sequence[MasterKey]) -> None:
        if not ring:
            raise VaultError("the master key ring is empty")
        self._redis = redis
        self._keys = keys
        self._ring = {k.kid: AESGCM(k.key) for k in ring}
        self._active = ring[0].kid
        self._cache: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._swap = redis.register_script(_SWAP)
        self._create = redis.register_script(_CREATE)

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

    async def _dek(self, user_id: str, *, create: bool) -> AESGCM:
        key = self._keys.dek(user_id)
        stored: bytes | None = await self._redis.get(key)
        if stored is None:
            if not create:
                raise KeyShredded("no data key for this user")
            candidate = self._wrap(user_id, AESGCM.generate_key(256))
            created = int(await self._create(keys=[key, self._keys.user(user_id)], args=[candidate]))
            if created < 0:
                raise KeyShredded("the user is gone or being erased")
            if not created:
                stored = await self._redis.get(key)
                if stored is None:
                    raise KeyShredded("data key vanished while it was created")
            else:
                stored = candidate
        cached = self._cache.get(stored)
        if cached is not None:
            self._cache.move_to_end(stored)
            return cached
        aead = AESGCM(self._unwrap(user_id, stored))
        self._cache[stored] = aead
        if len(self._cache) > 10_000:
            self._cache.popitem(last=False)
        return aead

    async def encrypt(self, user_id: str, context: Sequence[str], plaintext: bytes) -> bytes:
        aead = await self._dek(user_id, create=True)
        nonce = os.urandom(_NONCE)
        return nonce + aead.encrypt(nonce, plaintext, aad(user_id, *context))

    async def decrypt(self, user_id: str, context: Sequence[str], blob: bytes) -> bytes:
        aead = await self._dek(user_id, create=False)
        try:
            return aead.decrypt(blob[:_NONCE], blob[_NONCE:], aad(user_id, *context))
        except InvalidTag as exc:
            raise VaultError("ciphertext does not open for this user and context") from exc

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
        await self._redis.delete(self._keys.dek(user_id))

    async def rotate(self, user_ids: Sequence[str]) -> int:
        """Re-wrap these users' data keys under the active kid; return how many changed."""
        changed = 0
        for user_id in user_ids:
            key = self._keys.dek(user_id)
            stored: bytes | None = await self._redis.get(key)
            if stored is None or stored.startswith(self._active.encode() + b"."):
                continue
            rewrapped = self._wrap(user_id, self._unwrap(user_id, stored))
            if await self._swap(keys=[key], args=[stored, rewrapped]):
                changed += 1
        return changed

    async def status(self, user_ids: Sequence[str]) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for user_id in user_ids:
            stored: bytes | None = await self._redis.get(self._keys.dek(user_id))
            if stored is not None:
                counts[stored.partition(b".")[0].decode(errors="replace")] += 1
        return dict(counts)
