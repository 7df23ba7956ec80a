"""Connect links in the wrong hands (contract §9.5).

A connect URL forwarded to someone else must not connect that person's mailbox to the user's
server: with `expected_account`, any other account that signs in gets its grant revoked and
nothing is stored. And a stranger who learns a flow's `state` (from a log, a Referer, a
shoulder) must not be able to cancel it by calling the callback first."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway
from tests.support.oauth_world import RETURN_ORIGIN, Browser, World, auth, start_connect, statuses

pytestmark = pytest.mark.asyncio(loop_scope="module")
BOTH = pytest.mark.parametrize("provider", ["google", "microsoft"])


async def connect_expecting(gateway: Gateway, user_id: str, provider: str, expected: Any) -> Any:
    body = {"provider": provider, "return_url": f"{RETURN_ORIGIN}/settings", "expected_account": expected}
    return await gateway.admin("POST", f"/admin/v1/users/{user_id}/connect", json=body)


def outcome(url: str) -> dict[str, list[str]]:
    assert url.startswith(f"{RETURN_ORIGIN}/settings?"), url
    return parse_qs(urlsplit(url).query)


async def nothing_stored(gateway: Gateway, created: dict[str, Any], user_id: str, provider: str) -> None:
    assert await (await gateway.client.get("/v1/connections", headers=auth(created))).json() == []
    assert await gateway.broker.store.get(user_id, provider) is None
    assert await gateway.services.redis.xlen(gateway.services.keys.queue(user_id)) == 0, "no event was queued"


@BOTH
async def test_a_forwarded_link_signed_in_by_another_account_is_revoked_and_stores_nothing(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World, provider: str
):
    created = await gateway.create_user(dedicated, "owner")
    # The owner forwarded the link; someone else opens it and signs in with their own mailbox.
    await world.auth.control("mode", account="victim@example.test")
    await world.auth.control("reset")
    resp = await connect_expecting(gateway, "owner", provider, "owner@example.test")
    assert resp.status == 200, await resp.text()
    landed = await browser.open((await resp.json())["url"])

    assert outcome(landed)["status"] == ["error"]
    assert outcome(landed)["reason"] == ["account_mismatch"]
    to_provider = parse_qs(urlsplit(browser.hops[0][2]["Location"]).query)
    assert to_provider["login_hint"] == ["owner@example.test"]
    await nothing_stored(gateway, created, "owner", provider)
    counts = await world.auth.counts()
    assert counts.get("token:authorization_code") == 1, "the code was exchanged"
    # Google's grant is revoked at once; Microsoft has no revocation endpoint, its tokens are dropped.
    assert counts.get("revocations", 0) == (1 if provider == "google" else 0)
    assert statuses(dedicated, "owner") == []


@BOTH
async def test_the_expected_account_matches_whatever_its_case(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World, provider: str
):
    created = await gateway.create_user(dedicated, "cased")
    await world.auth.control("reset")
    resp = await connect_expecting(gateway, "cased", provider, "User@Example.TEST")
    assert resp.status == 200, await resp.text()
    landed = await browser.open((await resp.json())["url"])
    assert outcome(landed)["status"] == ["connected"]
    [connection] = await (await gateway.client.get("/v1/connections", headers=auth(created))).json()
    assert connection["account"] == "user@example.test"
    assert (await world.auth.counts()).get("revocations", 0) == 0


@pytest.mark.parametrize(
    "expected", ["not-an-address", 42, "two@at@signs", "with space@example.test", "x" * 65 + "@example.test", ""]
)
async def test_an_expected_account_that_is_not_an_address_is_400(
    gateway: Gateway, dedicated: DedicatedServer, expected: Any
):
    await gateway.create_user(dedicated, "picky")
    resp = await connect_expecting(gateway, "picky", "google", expected)
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_expected_account"
    flows = gateway.services.keys.user_key("picky", "oauth:flows")
    assert not await gateway.services.redis.exists(flows), "no connect session was created"


@BOTH
@pytest.mark.parametrize("extra", ["", "&error=access_denied"])
async def test_a_stranger_holding_the_state_cannot_cancel_the_users_flow(
    gateway: Gateway, browser: Browser, dedicated: DedicatedServer, world: World, provider: str, extra: str
):
    created = await gateway.create_user(dedicated, "target")
    # The user's browser has been to the provider and is about to come back with the code.
    callback = await browser.open(
        await start_connect(gateway, "target", provider), stop_at=f"{gateway.settings.public_url}/oauth/callback/"
    )
    state = parse_qs(urlsplit(callback).query)["state"][0]
    async with Browser(world.tls, f"http://127.0.0.1:{world.port}") as stranger:
        first = await stranger.open(f"{gateway.settings.public_url}/oauth/callback/{provider}?state={state}{extra}")
        assert outcome(first)["reason"] == ["bad_state"]
    # The user's own browser still completes the flow with the same state.
    landed = await browser.open(callback)
    assert parse_qs(urlsplit(landed).query)["status"] == ["connected"], landed
    [connection] = await (await gateway.client.get("/v1/connections", headers=auth(created))).json()
    assert connection["provider"] == provider
