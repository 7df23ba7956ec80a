"""Benchmark 3 — the token broker.

- Cached leases/s: dedicated servers calling `POST /v1/connections/google/token` for tokens
  that are still fresh (no provider call), closed loop, against `GET /healthz` of the same
  process as the baseline (the fixed cost of any request: HTTP, routing, middleware).
- 100 concurrent requests on one expired token: exactly one refresh must reach the
  provider, and every request must get the same new token. The baseline is one request on
  an expired token (one refresh, nobody waiting on it).

The provider is `bench/provider.py` (Google's token endpoint wire format) with a fixed
`PROVIDER_DELAY_MS` standing for the provider's own latency. Connections are written with
the gateway's own `ConnectionStore` (vault-encrypted, as the connect flow stores them).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from bench.common import Child, Results, Row, log, median, percentile
from bench.fleet import Fleet, User, make_users
from bench.routing import load
from foundation.config import parse_master_keys
from foundation.redis_keys import Keys
from foundation.storage import connect
from foundation.vault import Vault
from oauth.store import ConnectionStore, Tokens

PROVIDER_DELAY_MS = 50.0
USERS = 100
CONCURRENCY = 64
SECONDS = 4.0
STAMPEDE = 100
CLIENT_ID = "bench-client.apps.googleusercontent.com"
CLIENT_SECRET = "bench-client-secret"


async def run(results: Results, *, rounds: int) -> None:
    name = "broker"
    provider = Child(
        "bench.provider", "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
        "--delay-ms", str(PROVIDER_DELAY_MS),
    ).start()  # fmt: skip
    fleet = Fleet(
        gateway_env={
            "ALLY_GOOGLE_CLIENT_ID": CLIENT_ID,
            "ALLY_GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
            "ALLY_GOOGLE_TOKEN_URI": f"{provider.url}/token",
        }
    )
    try:
        await fleet.start()
        cached = make_users(USERS, prefix="c")
        expired = make_users(2 * rounds, prefix="x")
        await fleet.register([*cached, *expired])
        await seed(fleet, cached, expires_in=3600)
        await seed(fleet, expired, expires_in=-60)
        await _cached(results, name, fleet, cached, rounds)
        await _stampede(results, name, fleet, provider, expired, rounds)
    finally:
        await fleet.stop()
        provider.stop()


async def seed(fleet: Fleet, users: list[User], *, expires_in: float) -> None:
    """Store a Google connection per user through the gateway's own store and vault."""
    assert fleet.redis is not None
    redis = connect(fleet.redis.url)
    keys = Keys("ally:")
    store = ConnectionStore(redis, keys, Vault(redis, keys, parse_master_keys(fleet.master_keys)))
    try:
        for user in users:
            tokens = Tokens(
                access_token="ya29.bench-seed-" + user.user_id,
                expires_at=time.time() + expires_in,
                refresh_token="1//bench-" + user.user_id,
                scopes=("https://www.googleapis.com/auth/gmail.readonly",),
            )
            await store.put(user.user_id, "google", f"{user.user_id}@example.com", tokens, connected_at=time.time())
    finally:
        await redis.aclose()


async def _cached(results: Results, name: str, fleet: Fleet, users: list[User], rounds: int) -> None:
    assert fleet.gateway is not None
    port = fleet.gateway.port
    lease_users = [["/v1/connections/google/token", 0, u.server_token] for u in users]
    health_users = [["/healthz", 0, ""]]
    rates: dict[str, list[float]] = {"lease": [], "healthz": []}
    p99: dict[str, list[float]] = {"lease": [], "healthz": []}
    for r in range(rounds):
        order = ("healthz", "lease") if r % 2 == 0 else ("lease", "healthz")
        for what in order:
            spec: dict[str, Any] = {"port": port, "duration": SECONDS, "closed": CONCURRENCY}
            if what == "lease":
                spec.update(users=lease_users, body='{"min_ttl": 300}')
            else:
                spec.update(users=health_users, method="GET", body="")
            out = await load(spec, SECONDS)
            rows = out["rows"]
            ok = [r_ for r_ in rows if r_[4] == 200]
            bad = len(rows) - len(ok)
            span = max(r_[3] for r_ in ok) - min(r_[2] for r_ in ok)
            rates[what].append(len(ok) / span)
            p99[what].append(percentile([(r_[3] - r_[2]) * 1000 for r_ in ok], 99))
            log(f"  {what}: {len(ok) / span:,.0f}/s over {len(ok)} answers ({bad} not 200), p99 {p99[what][-1]:.1f} ms")
            if bad:
                results.note(name, f"{what}: {bad} answers were not 200")
    results.add(
        Row(
            name,
            f"cached leases/s ({CONCURRENCY} connections, closed loop)",
            median(rates["lease"]),
            "/s",
            median(rates["healthz"]),
            "GET /healthz, same process",
            rounds=rates["lease"],
        )
    )
    results.add(
        Row(
            name,
            "cached lease p99 under that load",
            median(p99["lease"]),
            "ms",
            median(p99["healthz"]),
            "GET /healthz",
            rounds=p99["lease"],
        )
    )


async def _stampede(results: Results, name: str, fleet: Fleet, provider: Child, users: list[User], rounds: int) -> None:
    assert fleet.gateway is not None
    singles, crowds, refresh_counts = [], [], []
    for r in range(rounds):
        single_user, crowd_user = users[2 * r], users[2 * r + 1]
        single = await _burst(fleet, single_user, 1)
        crowd = await _burst(fleet, crowd_user, STAMPEDE)
        counts = await _provider_counts(fleet, provider)
        n_refresh = counts.get("1//bench-" + crowd_user.user_id, 0)
        tokens = {orjson.loads(b)["access_token"] for b in crowd["bodies"] if b.startswith("{")}
        ok = sum(1 for row in crowd["rows"] if row[4] == 200)
        log(
            f"  expired token: 1 request {single['span'] * 1000:.1f} ms; {STAMPEDE} concurrent "
            f"{crowd['span'] * 1000:.1f} ms, {ok} answered 200, {n_refresh} refresh(es), {len(tokens)} token(s)"
        )
        if ok != STAMPEDE or n_refresh != 1 or len(tokens) != 1:
            results.note(name, f"round {r + 1}: {ok}/{STAMPEDE} ok, {n_refresh} refreshes, {len(tokens)} tokens")
        singles.append(single["span"] * 1000)
        crowds.append(crowd["span"] * 1000)
        refresh_counts.append(float(n_refresh))
    results.add(
        Row(
            name,
            f"{STAMPEDE} concurrent requests on an expired token: time to serve all",
            median(crowds),
            "ms",
            median(singles),
            "1 request on an expired token",
            rounds=crowds,
            note=f"provider latency {PROVIDER_DELAY_MS:.0f} ms",
        )
    )
    results.add(
        Row(
            name,
            f"refreshes at the provider for those {STAMPEDE} requests",
            max(refresh_counts),
            "",
            target="exactly 1",
            met=all(c == 1 for c in refresh_counts),
            rounds=refresh_counts,
        )
    )


async def _burst(fleet: Fleet, user: User, n: int) -> dict[str, Any]:
    assert fleet.gateway is not None
    spec = {
        "port": fleet.gateway.port,
        "duration": 0.001,
        "count": n,
        "rate": 1e7,
        "keep_bodies": True,
        "users": [["/v1/connections/google/token", 0, user.server_token]],
        "body": '{"min_ttl": 300}',
    }
    out = await load(spec, 10)
    rows = out["rows"]
    out["span"] = max(r[3] for r in rows) - min(r[2] for r in rows)
    return out


async def _provider_counts(fleet: Fleet, provider: Child) -> dict[str, int]:
    async with fleet.http.get(f"{provider.url}/_count") as resp:
        counts: dict[str, int] = await resp.json()
        return counts
