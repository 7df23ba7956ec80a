"""Serving one user (contract §4): claim the user's lease, send its transactions one at a time
until the queue is empty, and give the lease up, or schedule the retry after a failed attempt.

Per transaction at most two Redis round trips: the open script (which also takes the lease on
the first call) and the acknowledgement (which gives the lease up when nothing is left, after
leaving `due` in the same round trip). When this process queued the event that found the user
idle, the first open went out in the hand-over's own round trip (`Transactions.fresh_open`), and
the event costs the worker one. The user's due time is moved past the lease only when an attempt
takes longer than `MARK_AFTER`. The delivery worker (`routing/delivery.py`) decides whom to
serve and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from foundation import batching, metrics
from foundation.errors import GatewayError
from foundation.redis_keys import Keys
from routing.leases import Leases
from routing.outage import Outages
from routing.sender import Outcome, Sender, backoff
from routing.transactions import Declined, FreshOpen, LeaseLost, Transactions

log = logging.getLogger(__name__)

MARK_AFTER = 1.0
"""Seconds an attempt may take before the user's due time is moved past the lease."""


class Served(enum.Enum):
    SETTLED = "settled"
    """Nothing left, or the retry is scheduled: no look at `due` is needed for this user."""
    ELSEWHERE = "elsewhere"
    """Another worker holds the lease."""
    UNSETTLED = "unsettled"
    """Ended by a local failure or a stop: `due` may hold work for this user."""


class Courier:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        leases: Leases,
        transactions: Transactions,
        sender: Sender,
        outages: Outages | None,
        wake: Callable[[str], None],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._leases = leases
        self._transactions = transactions
        self._sender = sender
        self._outages = outages
        """Told of failures, so the people writing to a down server hear of it."""
        self._wake = wake
        self.closed = False

    async def serve(self, user_id: str, first: FreshOpen | None = None) -> Served:
        """Claim the user and deliver its queue while we hold the lease; on failure, schedule the
        retry. `first`: the claim went out already, in the hand-over's round trip."""
        released = False
        loop = asyncio.get_running_loop()
        marking: list[asyncio.Future[None]] = []

        def mark() -> None:
            marking.append(asyncio.ensure_future(self._leases.mark_served(user_id)))

        timer: asyncio.TimerHandle | None = None
        try:
            claim: batching.Call | None = None
            queued = True
            while not self.closed:
                # After an acknowledgement that left the queue empty there is nothing to open.
                opened = (
                    await self._transactions.open(user_id, claim=True, before=claim, first=first) if queued else None
                )
                claim, first = None, None
                if opened is None:
                    # Out of `due`, then the last look (see `Leases.release_if_idle`).
                    busy = await self._leases.release_if_idle(user_id)
                    if not busy:
                        released = True
                        return Served.SETTLED
                    claim = self._leases.placeholder_call(user_id, only_if_due=False)
                    queued = True
                    continue
                # An attempt that takes long moves the user's due time past the lease, so that
                # other workers stop trying to claim it meanwhile. Most attempts end well before:
                # they leave `due` with their acknowledgement and need no such write.
                timer = loop.call_later(MARK_AFTER, mark)
                outcome = await self._sender.send(opened.txn_id, opened.body, opened.target)
                timer.cancel()
                # The mark goes before the next write to `due` (a retry time must not be pushed back).
                while marking:
                    await marking.pop()
                if outcome.ok:
                    # Out of `due` first, then acknowledged and the lease given up if nothing is left.
                    done = await self._transactions.acknowledge(
                        user_id, opened, before=self._leases.leave_due_call(user_id)
                    )
                    if done.released:
                        released = True
                        return Served.SETTLED
                    # Back into `due` (it left just now) with the next open.
                    claim = self._leases.placeholder_call(user_id, only_if_due=False)
                    queued = done.left > 0
                else:
                    if self._outages is not None:
                        await self._outages.failed(user_id)
                    await self._schedule_retry(user_id, outcome)
                    return Served.SETTLED
        except Declined:
            # A transaction awaits its retry time (in `due`), and nobody holds the lease for it.
            released = True
            return Served.SETTLED
        except LeaseLost:
            # Another worker serves the user; look again when its lease could have lapsed.
            released = True  # not ours to give up
            return Served.ELSEWHERE
        except (RedisError, GatewayError, OSError) as exc:
            log.warning("delivery failed locally; will retry", extra={"error": type(exc).__name__})
            with contextlib.suppress(RedisError):
                await self._redis.zadd(self._keys.due, {user_id: time.time() + 1.0})
        except Exception:
            log.exception("unexpected delivery error; will retry")
            with contextlib.suppress(RedisError):
                await self._redis.zadd(self._keys.due, {user_id: time.time() + 5.0})
        finally:
            if timer is not None:
                timer.cancel()
            if not released:
                with contextlib.suppress(RedisError, OSError):
                    done_release = await self._leases.release(user_id)
                    if done_release and self.closed:
                        # A clean stop interrupted this user: let another process take over now,
                        # not when the placeholder due time set at lease time comes round.
                        await self._redis.zadd(self._keys.due, {user_id: time.time()}, xx=True)
        return Served.UNSETTLED

    async def _schedule_retry(self, user_id: str, outcome: Outcome) -> None:
        attempts = await self._transactions.failed_attempt(user_id)
        reason = f"http_{outcome.status}" if outcome.status is not None else "unreachable"
        await self._redis.hset(
            self._keys.counters(user_id), mapping={"last_failure_at": repr(time.time()), "last_failure": reason}
        )
        metrics.DELIVERY_RETRIES.labels(
            "unreachable" if outcome.status is None else "retry_after" if outcome.retry_after is not None else "refused"
        ).inc()
        delay = outcome.retry_after if outcome.retry_after is not None else backoff(attempts)
        await self._redis.zadd(self._keys.due, {user_id: time.time() + delay})
        # Read the ping flag only after writing the retry time: a ping that set its flag before
        # this read is seen here, and one that sets it later writes `due` after us. Either way
        # the ping wins, whichever order the two processes ran in.
        if await self._redis.getdel(self._keys.user_key(user_id, "ping")):
            await self._redis.zadd(self._keys.due, {user_id: time.time()})
            self._wake(user_id)
