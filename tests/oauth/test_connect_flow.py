from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from oauth.connect import FLOWS
from routing.hooks import Hooks
from routing.plugin import Plugin
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway
from tests.support.oauth_world import RETURN_ORIGIN, Browser, World, auth, start_connect, statuses

pytestmark = pytest.mark.asyncio(loop_scope="module")
BOTH = pytest.mark.parametrize("provider", ["google", "microsoft"])


async def connect(gateway: Gateway, browser: Browser, user_id: str, provider: str) -> dict[str, list[str]]:
    final = await browser.open(await start_connect(gateway, user_id, provider))
    assert final.startswith(f"{RETURN_ORIGIN}/settings?"), final
    return parse_qs(urlsplit(final).query)


async def lease(gateway: Gateway, created: dict[str, Any], provider: str, min_ttl: int = 300) -> Any:
    return await gateway.client.post(
        f"/v1/connections/{provider}/token", headers=auth(created), json={"min_ttl": min_ttl}
    )


async def expire(gateway: Gateway, user_id: str, provider: str, *, left: float = -1) -> None:
    """Make the stored access token one with `left` seconds to live, last refreshed long ago."""
    store = gateway.broker.store
    found = await store.load(user_id, provider)
    assert found is not None
    assert await store.update_tokens(found[0], dataclasses.replace(found[1], expires_at=time.time() + left))
    await gateway.services.redis.hset(store.key(user_id, provider), "updated_at", repr(time.time() - 3600))


@BOTH
async def test_connect_flow_stores_the_grant_and_returns_connected(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World, provider: str
):
    created = await gateway.create_user(dedicated, "alice")
    world.apis.calls.clear()
    query = await connect(gateway, browser, "alice", provider)
    assert query == {"tab": ["mail"], "status": ["connected"], "provider": [provider]}

    # The browser was bound by a cookie and sent to the provider with state and PKCE S256.
    start, to_provider = browser.hops[0], browser.hops[0][2]["Location"]
    cookie = start[2]["set-cookie-all"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    params = parse_qs(urlsplit(to_provider).query)
    assert params["code_challenge_method"] == ["S256"]
    assert len(params["state"][0]) >= 32 and params["code_challenge"][0]
    assert params["redirect_uri"] == [f"{gateway.settings.public_url}/oauth/callback/{provider}"]
    if provider == "google":
        assert params["access_type"] == ["offline"]
        assert params["prompt"] == ["consent"]
        assert params["include_granted_scopes"] == ["true"]
    # Google: the address from Gmail users.getProfile; Microsoft: from the ID token's claims.
    assert world.apis.calls == (["gmail.getProfile"] if provider == "google" else [])

    resp = await gateway.client.get("/v1/connections", headers=auth(created))
    [connection] = await resp.json()
    assert connection["provider"] == provider
    assert connection["account"] == "user@example.test"
    assert connection["status"] == "connected"
    assert connection["connected_at"].endswith("Z")

    resp = await lease(gateway, created, provider, 60)
    assert resp.status == 200
    leased = await resp.json()
    assert leased["account"] == "user@example.test"
    assert resp.headers["Cache-Control"] == "no-store"
    # The lease is a real token of the authorization server: Graph / Gmail stand-ins accept it.
    assert leased["access_token"]

    await dedicated.wait_for(lambda: len(statuses(dedicated, "alice")) == 1)
    assert statuses(dedicated, "alice") == [
        {"provider": provider, "account": "user@example.test", "status": "connected", "reason": None}
    ]
    # Nothing readable at rest: neither the token nor the address is in any of the user's values.
    redis = gateway.services.redis
    async for key in redis.scan_iter(match=f"{gateway.settings.key_prefix}*"):
        kind = await redis.type(key)
        # A key may go between the scan and the read (a delivery lease is released): skip it.
        values = [v for v in [await redis.get(key)] if v is not None] if kind == b"string" else []
        if kind == b"hash":
            values = list((await redis.hgetall(key)).values())
        for value in values:
            assert leased["access_token"].encode() not in value
            assert b"user@example.test" not in value


@BOTH
async def test_refresh_honours_min_ttl_and_keeps_rotated_refresh_tokens(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World, provider: str
):
    created = await gateway.create_user(dedicated, "bob")
    await connect(gateway, browser, "bob", provider)
    await world.auth.control("reset")
    first = await (await lease(gateway, created, provider, 60)).json()
    assert (await world.auth.counts()).get("token:refresh_token", 0) == 0
    # Asking for more life than the token has left refreshes it; the server rotates the refresh
    # token each time, so a second refresh only works if the rotated one was stored.
    tokens = [first["access_token"]]
    for n in (1, 2):
        await expire(gateway, "bob", provider, left=200)
        assert (await (await lease(gateway, created, provider, 60)).json())["access_token"] == tokens[-1]
        resp = await lease(gateway, created, provider, 300)
        assert resp.status == 200, await resp.text()
        tokens.append((await resp.json())["access_token"])
        assert (await world.auth.counts()).get("token:refresh_token") == n
    # Within 30 s of a refresh its token is returned even when min_ttl asks for more than it has.
    assert (await (await lease(gateway, created, provider, 3000)).json())["access_token"] == tokens[-1]
    assert (await world.auth.counts()).get("token:refresh_token") == 2
    if provider == "microsoft":
        # msal's cache is stored cut down to what those refreshes used: the account and its
        # (rotated) refresh token; the access token is stored once, beside it.
        stored = await gateway.broker.store.load("bob", provider)
        assert stored is not None and stored[1].msal_cache
        cache = orjson.loads(stored[1].msal_cache)
        assert set(cache) <= {"Account", "RefreshToken", "AppMetadata"}
        assert cache["Account"] and cache["RefreshToken"]
    assert len(set(tokens)) == 3
    resp = await gateway.client.get("/v1/connections", headers=auth(created))
    assert (await resp.json())[0]["status"] == "connected"


@BOTH
async def test_a_hundred_concurrent_requests_on_an_expired_token_refresh_once(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World, provider: str
):
    created = await gateway.create_user(dedicated, "carol")
    await connect(gateway, browser, "carol", provider)
    await expire(gateway, "carol", provider)
    await world.auth.control("reset")
    answers = await asyncio.gather(*(lease(gateway, created, provider, 300) for _ in range(100)))
    assert [a.status for a in answers] == [200] * 100
    assert len({(await a.json())["access_token"] for a in answers}) == 1
    assert (await world.auth.counts()).get("token:refresh_token") == 1


async def test_dead_grant_answers_409_once_marked_and_reconnect_heals_it(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World, caplog: pytest.LogCaptureFixture
):
    created = await gateway.create_user(dedicated, "dave")
    await connect(gateway, browser, "dave", "google")
    # The user revokes the gateway's access at the provider.
    found = await gateway.broker.store.load("dave", "google")
    assert found is not None
    await gateway.broker.providers["google"].revoke(found[1])
    await expire(gateway, "dave", "google")
    await world.auth.control("reset")
    resp = await lease(gateway, created, "google", 3000)
    assert resp.status == 409
    assert (await resp.json())["error"] == "reauth_required"
    assert (await world.auth.counts()).get("token_error:invalid_grant") == 1
    # The token endpoint's error body is never logged, nor anything of the grant.
    logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert found[1].refresh_token
    assert found[1].refresh_token not in logged
    assert world.google.client_secret not in logged
    assert "grant request is invalid" not in logged
    # Marked at once: the next call does not ask the provider again.
    resp = await lease(gateway, created, "google", 60)
    assert resp.status == 409
    assert (await world.auth.counts()).get("token_requests") == 1
    listed = await (await gateway.client.get("/v1/connections", headers=auth(created))).json()
    assert listed[0]["status"] == "reauth_required"
    await dedicated.wait_for(lambda: len(statuses(dedicated, "dave")) == 2)
    assert statuses(dedicated, "dave")[1] == {
        "provider": "google", "account": "user@example.test", "status": "reauth_required", "reason": "invalid_grant"
    }  # fmt: skip

    await connect(gateway, browser, "dave", "google")
    resp = await lease(gateway, created, "google", 60)
    assert resp.status == 200
    await dedicated.wait_for(lambda: len(statuses(dedicated, "dave")) == 3)
    assert statuses(dedicated, "dave")[2]["status"] == "connected"


@BOTH
async def test_a_sick_token_endpoint_is_retried_and_never_marks_the_grant_dead(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World, provider: str
):
    created = await gateway.create_user(dedicated, "erin")
    await connect(gateway, browser, "erin", provider)
    gateway.broker._retry_wait = 0.05
    await world.auth.control("reset")
    await world.auth.control("sick", requests=2)
    await expire(gateway, "erin", provider)
    resp = await lease(gateway, created, provider, 3000)
    assert resp.status == 200, await resp.text()
    assert (await world.auth.counts())["token_requests"] >= 3
    await world.auth.control("sick", requests=1000)
    await expire(gateway, "erin", provider)
    resp = await lease(gateway, created, provider, 3000)
    assert resp.status == 503
    assert (await resp.json())["error"] == "provider_unavailable"
    await world.auth.control("sick", requests=0)
    listed = await (await gateway.client.get("/v1/connections", headers=auth(created))).json()
    assert listed[0]["status"] == "connected"
    resp = await lease(gateway, created, provider, 300)
    assert resp.status == 200
    assert (await resp.json())["expires_at"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


async def test_declined_consent_returns_access_denied(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World
):
    created = await gateway.create_user(dedicated, "fay")
    await world.auth.control("mode", approve=False)
    query = await connect(gateway, browser, "fay", "microsoft")
    assert query["status"] == ["error"]
    assert query["reason"] == ["access_denied"]
    assert await (await gateway.client.get("/v1/connections", headers=auth(created))).json() == []


async def test_a_callback_without_the_binding_cookie_is_bad_state_and_state_is_single_use(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World
):
    created = await gateway.create_user(dedicated, "gus")
    # The victim's browser starts; the callback arrives in another browser (no cookie).
    final = await browser.open(
        await start_connect(gateway, "gus", "google"), stop_at=f"{gateway.settings.public_url}/oauth/callback/"
    )
    async with Browser(world.tls, f"http://127.0.0.1:{world.port}") as other:
        landed = await other.open(final)
        assert parse_qs(urlsplit(landed).query)["reason"] == ["bad_state"]
    assert await (await gateway.client.get("/v1/connections", headers=auth(created))).json() == []
    # The right browser spends the state; after that, even it cannot use it again.
    assert parse_qs(urlsplit(await browser.open(final)).query)["status"] == ["connected"]
    again = await browser.open(final)
    assert again.startswith("400 ")
    assert '"error":"bad_state"' in again


async def test_connect_url_is_single_use_and_expires(gateway: Gateway, browser: Browser, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "hal")
    url = await start_connect(gateway, "hal", "google")
    await browser.open(url)
    again = await browser.open(url)
    assert parse_qs(urlsplit(again).query)["reason"] == ["session_used"]
    late = await start_connect(gateway, "hal", "google")
    flows = gateway.client.app[FLOWS]
    key = flows.session_key(hashlib.sha256(late.rsplit("/", 1)[1].encode()).hexdigest())
    await gateway.services.redis.hset(key, "expires_at", repr(time.time() - 1))
    expired = await browser.open(late)
    assert parse_qs(urlsplit(expired).query)["reason"] == ["expired_session"]


async def test_disconnect_revokes_at_the_provider_and_other_users_never_see_the_connection(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World
):
    alice = await gateway.create_user(dedicated, "ida")
    mallory = await gateway.create_user(dedicated, "mallory")
    await connect(gateway, browser, "ida", "google")
    assert (await lease(gateway, mallory, "google")).status == 404
    assert await (await gateway.client.get("/v1/connections", headers=auth(mallory))).json() == []
    status = await (await gateway.admin("GET", "/admin/v1/users/ida")).json()
    assert status["connections"]["google"]["status"] == "connected"
    exported = await (await gateway.admin("GET", "/admin/v1/users/ida/export")).text()
    assert '"account":"user@example.test"' in exported
    stored = await gateway.broker.store.load("ida", "google")
    assert stored is not None
    assert stored[1].access_token not in exported
    assert str(stored[1].refresh_token) not in exported
    await world.auth.control("reset")
    resp = await gateway.admin("DELETE", "/admin/v1/users/ida/connections/google")
    assert resp.status == 200
    assert (await world.auth.counts()).get("revocations") == 1
    assert (await lease(gateway, alice, "google")).status == 404
    await dedicated.wait_for(lambda: any(s["status"] == "disconnected" for s in statuses(dedicated, "ida")))
    resp = await gateway.admin("DELETE", "/admin/v1/users/ida/connections/google")
    assert resp.status == 404


async def test_erasure_revokes_the_grant_and_a_revocation_owed_to_a_down_provider_outlives_the_user(
    world: World, tmp_path: Path, browser: Browser, dedicated: DedicatedServer
):
    disconnected: list[tuple[str, str, str]] = []

    async def hook(user_id: str, provider: str, account: str) -> None:
        disconnected.append((user_id, provider, account))

    watching = Plugin(name="test-watcher", hooks=Hooks(disconnected={"watcher": hook}))
    async with world.gateway(tmp_path, extra=[watching]) as gateway:
        await gateway.create_user(dedicated, "jan")
        await gateway.create_user(dedicated, "kim")
        await connect(gateway, browser, "jan", "google")
        await connect(gateway, browser, "kim", "google")
        await world.auth.control("reset")
        assert (await gateway.admin("DELETE", "/admin/v1/users/jan")).status == 202
        await gateway.services.eraser.wait("jan")
        assert (await world.auth.counts()).get("revocations") == 1
        assert disconnected == [("jan", "google", "user@example.test")]

        # The provider is down while Kim is erased: the revocation is owed, anonymously, under the master key.
        await world.auth.control("sick", requests=1000)
        assert (await gateway.admin("DELETE", "/admin/v1/users/kim")).status == 202
        await gateway.services.eraser.wait("kim")
        revocations = gateway.broker.revocations
        assert await revocations.pending() == 1
        redis = gateway.services.redis
        assert not await redis.exists(gateway.services.keys.user("kim"), gateway.services.keys.dek("kim"))
        names = [k.decode() async for k in redis.scan_iter(match=f"{gateway.settings.key_prefix}*")]
        assert not any("kim" in name for name in names)
        assert (await gateway.admin("GET", "/admin/v1/users/kim")).status == 404

        assert await revocations.run_once(now=time.time() + 3600) == 0  # still down: kept, retried later
        assert await revocations.pending() == 1
        await world.auth.control("sick", requests=0)
        await world.auth.control("reset")
        assert await revocations.run_once(now=time.time() + 10 * 3600) == 1
        assert (await world.auth.counts()).get("revocations") == 1
        assert await revocations.pending() == 0


async def test_reconnect_keeps_the_connection_and_a_missing_refresh_token_never_erases_the_stored_one(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer
):
    from oauth.providers import Grant
    from oauth.store import Tokens

    await gateway.create_user(dedicated, "lee")
    await connect(gateway, browser, "lee", "google")
    broker = gateway.broker
    before = await broker.store.load("lee", "google")
    assert before is not None
    assert before[1].refresh_token
    await connect(gateway, browser, "lee", "google")
    after = await broker.store.load("lee", "google")
    assert after is not None
    assert after[0].connected_at == before[0].connected_at
    assert after[1].refresh_token != before[1].refresh_token  # a new grant, a new refresh token
    # A provider answer without a refresh token (Google leaves it out on repeated consent).
    bare = Tokens(access_token="ya29.fresh", expires_at=time.time() + 3600, scopes=("openid",))
    await broker.connected("lee", "google", Grant(account="user@example.test", tokens=bare))
    kept = await broker.store.load("lee", "google")
    assert kept is not None
    assert kept[1].access_token == "ya29.fresh"
    assert kept[1].refresh_token == after[1].refresh_token


async def test_microsoft_account_comes_from_graph_me_when_the_id_token_has_no_address(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World
):
    import requests

    created = await gateway.create_user(dedicated, "max")
    await connect(gateway, browser, "max", "microsoft")
    token = (await (await lease(gateway, created, "microsoft", 60)).json())["access_token"]
    microsoft = gateway.broker.providers["microsoft"]
    world.apis.calls.clear()

    def lookup(access_token: str) -> str:
        with requests.Session() as session:
            session.verify = str(world.pki.ca_file)
            return microsoft._account(session, {"id_token_claims": {"sub": "x"}}, access_token)  # type: ignore[attr-defined,no-any-return]

    assert await asyncio.to_thread(lookup, token) == "user@example.test"
    assert world.apis.calls == ["graph.me"]
    from foundation.errors import ProviderError

    with pytest.raises(ProviderError):
        await asyncio.to_thread(lookup, "not-a-token")


async def test_tokens_copied_into_another_users_record_do_not_open(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer
):
    await gateway.create_user(dedicated, "ned")
    other = await gateway.create_user(dedicated, "oli")
    await connect(gateway, browser, "ned", "google")
    await connect(gateway, browser, "oli", "google")
    store, redis = gateway.broker.store, gateway.services.redis
    await redis.hset(store.key("oli", "google"), "tokens", await redis.hget(store.key("ned", "google"), "tokens"))
    resp = await lease(gateway, other, "google", 60)
    assert resp.status == 409
    assert (await resp.json())["error"] == "reauth_required"
