"""Graph subscriptions: which subscription belongs to which user, and each one's lifecycle.

Redis:
- `outlook:sub:<subscription id>` (global hash): `user`, `state` (SHA-256 of the
  subscription's random clientState; the secret itself is never stored).
- `{u:<id>}:outlook` (hash): `account` (vault-encrypted), `sub_id`, `expires_at`, `status`,
  `renewed_at`, `failures`, `last_error`, `action` (`reauthorize`/`recreate`, asked by a
  lifecycle notification), `resync` (why the server must resync once the subscription
  works again).
- the `outlook` due set (`foundation/schedule.py`): when each subscription is next looked after.

The request path only records what a lifecycle notification asks for and makes the user
due now; the worker talks to Graph.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Any

from channels.outlook.graph import Graph, Subscription
from channels.renewal import Upkeep, backoff, iso, number, reason, text
from channels.tokens import TokenSource
from foundation import metrics
from foundation.errors import GatewayError, NotFound, ProviderError, ReauthRequired
from foundation.schedule import DueSet
from foundation.types import Event
from routing.handoff import Item
from routing.services import Services

log = logging.getLogger(__name__)

PROVIDER = "microsoft"
LIFETIME = 10_070 * 60.0
"""Just under Graph's 10,080-minute limit for messages, so clock skew cannot push us over it."""
RENEW_AHEAD = 3 * 24 * 3600.0
"""Renewed when three days are left: a failing renewal has days of retries before the lapse."""
SUBSCRIPTION_ID = re.compile(r"^[A-Za-z0-9-]{1,128}$")
_ACCOUNT = ("outlook", "account")

# KEYS: state hash. ARGV: subscription id, action, resync reason ('' for none).
# A lifecycle request for the user's current subscription; `recreate` wins over `reauthorize`.
_ASK = """
if redis.call('HGET', KEYS[1], 'sub_id') ~= ARGV[1] then return 0 end
if ARGV[2] == 'recreate' or redis.call('HGET', KEYS[1], 'action') ~= 'recreate' then
  redis.call('HSET', KEYS[1], 'action', ARGV[2])
end
if ARGV[3] ~= '' then redis.call('HSETNX', KEYS[1], 'resync', ARGV[3]) end
return 1
"""


def state_hash(client_state: str) -> str:
    return hashlib.sha256(client_state.encode()).hexdigest()


class Subscriptions(Upkeep):
    NAME = "outlook"
    PROVIDER = PROVIDER

    def __init__(self, services: Services, graph: Graph, tokens: TokenSource, due: DueSet, *, public_url: str) -> None:
        super().__init__(services, tokens, due)
        self._graph = graph
        self._notify_url = public_url.rstrip("/") + "/outlook/notify"
        self._lifecycle_url = public_url.rstrip("/") + "/outlook/lifecycle"
        self._ask = services.redis.register_script(_ASK)

    def _index(self, subscription_id: str) -> str:
        return self._services.keys.global_key(f"outlook:sub:{subscription_id}")

    # --- ingress -------------------------------------------------------------------------------

    async def owners(self, items: list[dict[str, Any]]) -> list[str | None]:
        """The user each item belongs to, or None when its subscription or clientState does not check out."""
        # Only strings can name a subscription (a list or an object here is not even hashable).
        ids = {sub_id for item in items if isinstance(sub_id := item.get("subscriptionId"), str)}
        # One round trip for the whole notification, however many subscriptions it names.
        looked_up = [sub_id for sub_id in ids if SUBSCRIPTION_ID.match(sub_id)]
        known: dict[str, tuple[bytes | None, bytes | None]] = {}
        if looked_up:
            pipe = self._redis.pipeline(transaction=False)
            for sub_id in looked_up:
                pipe.hmget(self._index(sub_id), ["user", "state"])
            for sub_id, (user, digest) in zip(looked_up, await pipe.execute(), strict=True):
                known[sub_id] = (user, digest)
        out: list[str | None] = []
        for item in items:
            sub_id, offered = item.get("subscriptionId"), item.get("clientState")
            user, digest = known.get(sub_id, (None, None)) if isinstance(sub_id, str) else (None, None)
            if user is None or digest is None:
                metrics.DROPPED.labels("outlook", "unknown_subscription").inc()
                out.append(None)
            elif not isinstance(offered, str) or not hmac.compare_digest(state_hash(offered).encode(), digest):
                metrics.WEBHOOK_REJECTED.labels("outlook", "bad_client_state").inc()
                out.append(None)
            else:
                out.append(user.decode())
        return out

    async def lifecycle(self, user_id: str, item: dict[str, Any]) -> None:
        """Act on one verified lifecycle notification (no Graph call here: the worker makes them)."""
        event, sub_id = item.get("lifecycleEvent"), str(item.get("subscriptionId"))
        if event == "missed":
            await self._resync(user_id, "missed", sub_id, dedup="")
            return
        if event == "subscriptionRemoved":
            asked = await self._ask(keys=[self._state(user_id)], args=[sub_id, "recreate", "subscription_removed"])
        elif event == "reauthorizationRequired":
            asked = await self._ask(keys=[self._state(user_id)], args=[sub_id, "reauthorize", ""])
        else:
            metrics.DROPPED.labels("outlook", "unknown_lifecycle_event").inc()
            return
        if int(asked):
            await self.due.put(user_id, time.time())
        else:
            metrics.DROPPED.labels("outlook", "stale_subscription").inc()

    async def queue(self, user_id: str, items: list[Item]) -> None:
        try:
            # Duplicates and drops at the queue's caps are counted by the hand-over.
            await self._services.handoff(user_id, items, dedup_scope="outlook")
        except NotFound:
            metrics.DROPPED.labels("outlook", "unknown_user").inc(len(items))

    async def _resync(self, user_id: str, reason: str, sub_id: str, *, dedup: str) -> None:
        event = Event("outlook.resync_required", "outlook", {"reason": reason, "subscription_id": sub_id})
        try:
            await self._services.handoff(user_id, [Item(event, dedup=dedup)], dedup_scope="outlook")
        except NotFound:
            metrics.DROPPED.labels("outlook", "unknown_user").inc()

    # --- connection lifecycle ------------------------------------------------------------------

    async def connected(self, user_id: str, account: str) -> None:
        key = self._state(user_id)
        sealed = await self._services.vault.encrypt(user_id, _ACCOUNT, account.encode())
        previous = await self._redis.hget(key, "account")
        if previous is not None:
            old = (await self._services.vault.decrypt(user_id, _ACCOUNT, previous)).decode()
            if old.lower() != account.lower():
                # Another mailbox: its subscription is of no use; a new one is made for this one.
                await self._redis.hset(key, "action", "recreate")
                await self._redis.hdel(key, "resync")
        await self._redis.hset(key, "account", sealed)
        await self._redis.hsetnx(key, "status", "pending")
        await self.renew_now(user_id)

    async def disconnected(self, user_id: str) -> None:
        """Delete the subscription at Graph (best effort) and forget it."""
        await self.due.remove(user_id)
        state = await self._redis.hgetall(self._state(user_id))
        sub_id = text(state, "sub_id")
        if sub_id:
            await self._delete_remote(user_id, sub_id)
            await self._redis.delete(self._index(sub_id))
        await self._redis.delete(self._state(user_id))

    async def _delete_remote(self, user_id: str, sub_id: str) -> None:
        try:
            await self._graph.delete(await self._tokens(user_id, PROVIDER), sub_id)
        except GatewayError as exc:
            # It then expires by itself within 7 days; its notifications find no subscription and are dropped.
            log.info("graph subscription not deleted", extra={"user_id": user_id, "reason": reason(exc)})

    # --- renewal -------------------------------------------------------------------------------

    async def renew(self, user_id: str) -> float | None:
        """Create, reauthorize or renew this user's subscription; returns when to look again."""
        state = await self._redis.hgetall(self._state(user_id))
        if not state or b"account" not in state:
            return None
        sub_id, action = text(state, "sub_id"), text(state, "action")
        expires_at = number(state, "expires_at")
        failures = int(number(state, "failures"))
        resync = text(state, "resync")
        try:
            token = await self._tokens(user_id, PROVIDER)
            if not sub_id or action == "recreate":
                sub = await self._create(user_id, token, replacing=sub_id)
            elif action == "reauthorize" and expires_at - time.time() > RENEW_AHEAD:
                await self._graph.reauthorize(token, sub_id)
                sub = Subscription(sub_id, expires_at)
            else:
                sub = await self._graph.renew(token, sub_id, time.time() + LIFETIME)
        except ReauthRequired:
            await self._set(user_id, status="reauth_required", resync=resync or "subscription_lapsed")
            metrics.MAIL_UPKEEP.labels("outlook", "reauth_required").inc()
            log.info("graph subscription paused until the user reconnects", extra={"user_id": user_id})
            return None
        except NotFound:
            return None  # no connection any more; the disconnect hook forgets the rest
        except ProviderError as exc:
            if exc.status == 404 and sub_id:
                # Graph no longer knows it: a new one, and the server catches up on what was missed.
                await self._set(user_id, action="recreate", resync=resync or "subscription_lapsed")
                metrics.MAIL_UPKEEP.labels("outlook", "recreated").inc()
                return time.time()
            return await self._failed(user_id, state, failures, exc)
        except GatewayError as exc:
            return await self._failed(user_id, state, failures, exc)
        written = await self._set(
            user_id,
            status="active",
            sub_id=sub.id,
            expires_at=repr(sub.expires_at),
            renewed_at=repr(time.time()),
            failures=0,
            last_error="",
            action="",
        )
        if not written:
            return None
        metrics.MAIL_UPKEEP.labels("outlook", "ok").inc()
        if resync:
            await self._resync(user_id, resync, sub.id, dedup=f"resync:{sub.id}:{resync}")
            await self._redis.hdel(self._state(user_id), "resync")
        return max(time.time() + 60.0, sub.expires_at - RENEW_AHEAD)

    async def _create(self, user_id: str, token: str, *, replacing: str) -> Subscription:
        client_state = secrets.token_urlsafe(48)
        sub = await self._graph.create(
            token,
            notification_url=self._notify_url,
            lifecycle_url=self._lifecycle_url,
            client_state=client_state,
            expires_at=time.time() + LIFETIME,
        )
        if not SUBSCRIPTION_ID.match(sub.id):
            raise ProviderError("graph_bad_subscription_id")
        await self._redis.hset(self._index(sub.id), mapping={"user": user_id, "state": state_hash(client_state)})
        if replacing and replacing != sub.id:
            await self._redis.delete(self._index(replacing))
            await self._delete_remote(user_id, replacing)
        log.info("graph subscription created", extra={"user_id": user_id})
        return sub

    async def _failed(self, user_id: str, state: dict[bytes, bytes], failures: int, exc: Exception) -> float:
        fields: dict[str, str | int | float] = {
            "status": "failing",
            "failures": failures + 1,
            "last_error": reason(exc),
        }
        if 0 < number(state, "expires_at") <= time.time() and not text(state, "resync"):
            fields["resync"] = "subscription_lapsed"
        await self._set(user_id, **fields)
        metrics.MAIL_UPKEEP.labels("outlook", "failed").inc()
        log.warning("graph subscription upkeep failed", extra={"user_id": user_id, "reason": reason(exc)})
        return time.time() + backoff(failures + 1, exc)

    # --- per-user hooks ------------------------------------------------------------------------

    async def status(self, user_id: str) -> dict[str, Any]:
        state = await self._redis.hgetall(self._state(user_id))
        if not state:
            return {"subscription": "none"}
        return {
            "subscription": text(state, "status") or "pending",
            "expires_at": iso(number(state, "expires_at")),
            "renewed_at": iso(number(state, "renewed_at")),
            "next_renewal_at": iso(await self.due.due_at(user_id) or 0),
            "pending_action": text(state, "action") or None,
            "failures": int(number(state, "failures")),
            "last_error": text(state, "last_error") or None,
        }

    async def export(self, user_id: str) -> dict[str, Any]:
        state = await self._redis.hgetall(self._state(user_id))
        if not state:
            return {"subscription": "none", "expires_at": None}
        return {"subscription": text(state, "status") or "pending", "expires_at": iso(number(state, "expires_at"))}
