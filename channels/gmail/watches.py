"""Gmail watches: which address belongs to which user, and each user's `users.watch` lifecycle.

Redis:
- `gmail:addr:<sha256(address)>` (global): the user id that address belongs to; set at
  connect, removed (only if it still names that user) on disconnect and erasure.
- `{u:<id>}:gmail` (hash): `account` (the address, vault-encrypted), `addr` (its index
  hash), `status`, `history_id`/`expiration` of the live watch, `renewed_at`, `failures`,
  `last_error`, `lapsed` (set when the watch may have missed changes),
  `last_history_id` (the highest historyId forwarded).
- the `gmail` due set (`foundation/schedule.py`): when each user's watch is next renewed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from channels.gmail.api import GmailApi
from channels.renewal import Upkeep, backoff, iso, number, reason, text
from channels.tokens import TokenSource
from foundation import metrics
from foundation.errors import ClosedError, GatewayError, NotFound, ReauthRequired, VaultError
from foundation.schedule import DueSet, now_ms
from foundation.types import Event
from routing.handoff import Item
from routing.services import Services

log = logging.getLogger(__name__)

PROVIDER = "google"
RENEW_EVERY = 24 * 3600.0
_ACCOUNT = ("gmail", "account")

# KEYS: state hash. ARGV: history id (decimal, no leading zeros). Raises last_history_id.
# historyIds are unsigned 64-bit: compared as decimal strings, since Lua numbers are doubles.
_ADVANCE = """
if redis.call('HEXISTS', KEYS[1], 'account') == 0 then return 0 end
local last = redis.call('HGET', KEYS[1], 'last_history_id')
local new = ARGV[1]
if last and (#last > #new or (#last == #new and last >= new)) then return 0 end
redis.call('HSET', KEYS[1], 'last_history_id', new)
return 1
"""

# KEYS: index key. ARGV: user id. Forgets the address only if it still names this user.
_UNINDEX = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def address_hash(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def history_above(new: str, last: str) -> bool:
    return not last or int(new) > int(last)


class Watches(Upkeep):
    NAME = "gmail"
    PROVIDER = PROVIDER

    def __init__(
        self, services: Services, api: GmailApi, tokens: TokenSource, due: DueSet, *, topic: str | None
    ) -> None:
        super().__init__(services, tokens, due)
        self._api = api
        self._topic = topic
        self._advance = services.redis.register_script(_ADVANCE)
        self._unindex = services.redis.register_script(_UNINDEX)

    def _index(self, addr: str) -> str:
        return self._services.keys.global_key(f"gmail:addr:{addr}")

    # --- ingress -------------------------------------------------------------------------------

    async def notify(self, address: str, history_id: str, message_id: str) -> str:
        """Queue one mailbox change for its user; returns the outcome (queued, duplicate, stale, unknown)."""
        raw = await self._redis.get(self._index(address_hash(address)))
        if raw is None:
            metrics.DROPPED.labels("gmail", "unknown_address").inc()
            return "unknown"
        user_id = raw.decode()
        last = await self._redis.hget(self._state(user_id), "last_history_id")
        if last is not None and not history_above(history_id, last.decode()):
            metrics.DROPPED.labels("gmail", "stale_history").inc()
            return "stale"
        event = Event("gmail.notification", "gmail", {"email_address": address, "history_id": history_id})
        try:
            added = await self._services.handoff(user_id, [Item(event, dedup=message_id)], dedup_scope="gmail")
        except NotFound:
            # The user is gone (erased between the lookup and now): nothing to deliver to.
            metrics.DROPPED.labels("gmail", "unknown_address").inc()
            return "unknown"
        # Raised only after queueing: a crash in between is retried by Pub/Sub and deduplicated.
        await self._advance(keys=[self._state(user_id)], args=[history_id])
        await self._redis.hset(self._state(user_id), "last_push_at", repr(time.time()))
        if not added:
            return "duplicate"  # counted by the hand-over
        return "queued"

    # --- connection lifecycle ------------------------------------------------------------------

    async def connected(self, user_id: str, account: str) -> None:
        """Remember the address, point it at the user, and start the watch (or leave it to the worker)."""
        addr = address_hash(account)
        key = self._state(user_id)
        previous = await self._redis.hget(key, "addr")
        if previous is not None and previous.decode() != addr:
            # Another mailbox: its history ids mean nothing for this one.
            await self._redis.hdel(key, "last_history_id", "history_id", "expiration", "lapsed")
            await self._unindex(keys=[self._index(previous.decode())], args=[user_id])
        sealed = await self._services.vault.encrypt(user_id, _ACCOUNT, account.encode())
        await self._redis.hset(key, mapping={"account": sealed, "addr": addr})
        await self._redis.hsetnx(key, "status", "pending")
        await self._redis.set(self._index(addr), user_id)
        await self.renew_now(user_id)

    async def disconnected(self, user_id: str) -> None:
        """Stop the watch at Google (best effort) and forget the address and the state."""
        await self.due.remove(user_id)
        state = await self._redis.hgetall(self._state(user_id))
        if state and number(state, "expiration") > now_ms():
            try:
                await self._api.stop(await self._tokens(user_id, PROVIDER))
            except (GatewayError, ClosedError) as exc:
                # The watch then ends by itself within 7 days; its pushes find no address and are dropped.
                log.info("gmail watch not stopped at Google", extra={"user_id": user_id, "reason": reason(exc)})
        addr = text(state, "addr")
        if addr:
            await self._unindex(keys=[self._index(addr)], args=[user_id])
        await self._redis.delete(self._state(user_id))

    # --- renewal -------------------------------------------------------------------------------

    async def renew(self, user_id: str) -> float | None:
        """Call users.watch for this user; returns when to renew next (None: stop renewing)."""
        state = await self._redis.hgetall(self._state(user_id))
        if not state or b"account" not in state:
            return None
        if not self._topic:
            return None
        failures = int(number(state, "failures"))
        try:
            token = await self._tokens(user_id, PROVIDER)
            watch = await self._api.watch(token, self._topic)
        except ReauthRequired:
            await self._set(user_id, status="reauth_required", lapsed=text(state, "lapsed") or now_ms())
            metrics.MAIL_UPKEEP.labels("gmail", "reauth_required").inc()
            log.info("gmail watch paused until the user reconnects", extra={"user_id": user_id})
            return None
        except NotFound:
            return None  # no connection any more; the disconnect hook forgets the rest
        except GatewayError as exc:
            lapsed = text(state, "lapsed") or (now_ms() if 0 < number(state, "expiration") <= now_ms() else "")
            fields: dict[str, str | int | float] = {
                "status": "failing",
                "failures": failures + 1,
                "last_error": reason(exc),
            }
            if lapsed:
                fields["lapsed"] = lapsed
            await self._set(user_id, **fields)
            metrics.MAIL_UPKEEP.labels("gmail", "failed").inc()
            log.warning("gmail watch renewal failed", extra={"user_id": user_id, "reason": reason(exc)})
            return time.time() + backoff(failures + 1, exc)
        expired = 0 < number(state, "expiration") <= now_ms()
        lapsed = text(state, "lapsed") or (str(now_ms()) if expired else "")
        written = await self._set(
            user_id,
            status="active",
            history_id=watch.history_id,
            expiration=watch.expiration_ms,
            renewed_at=repr(time.time()),
            failures=0,
            last_error="",
        )
        if not written:
            return None
        metrics.MAIL_UPKEEP.labels("gmail", "ok").inc()
        if lapsed:
            await self._resync(user_id, state, watch.history_id, lapsed)
        return time.time() + RENEW_EVERY

    async def _resync(self, user_id: str, state: dict[bytes, bytes], history_id: str, lapsed: str) -> None:
        try:
            address = (await self._services.vault.decrypt(user_id, _ACCOUNT, state[b"account"])).decode()
        except VaultError:
            return
        payload: dict[str, Any] = {
            "email_address": address,
            "history_id": history_id,
            "last_history_id": text(state, "last_history_id") or None,
            "reason": "watch_lapsed",
        }
        event = Event("gmail.resync_required", "gmail", payload)
        # The dedup id is the lapse itself: a retry after a crash does not send it twice.
        await self._services.handoff(user_id, [Item(event, dedup=f"resync:{lapsed}")], dedup_scope="gmail")
        await self._redis.hdel(self._state(user_id), "lapsed")
        log.info("gmail watch re-established after a lapse", extra={"user_id": user_id})

    # --- per-user hooks ------------------------------------------------------------------------

    async def status(self, user_id: str) -> dict[str, Any]:
        state = await self._redis.hgetall(self._state(user_id))
        if not state:
            return {"watch": "none"}
        return {
            "watch": text(state, "status") or "pending",
            "expires_at": iso(number(state, "expiration") / 1000),
            "renewed_at": iso(number(state, "renewed_at")),
            "next_renewal_at": iso(await self.due.due_at(user_id) or 0),
            "last_push_at": iso(number(state, "last_push_at")),
            "last_history_id": text(state, "last_history_id") or None,
            "failures": int(number(state, "failures")),
            "last_error": text(state, "last_error") or None,
        }

    async def export(self, user_id: str) -> dict[str, Any]:
        state = await self._redis.hgetall(self._state(user_id))
        if not state:
            return {"watch": "none", "expires_at": None, "last_history_id": None}
        return {
            "watch": text(state, "status") or "pending",
            "expires_at": iso(number(state, "expiration") / 1000),
            "last_history_id": text(state, "last_history_id") or None,
        }
