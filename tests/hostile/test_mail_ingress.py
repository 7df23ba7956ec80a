"""`POST /gmail/push`, `POST /outlook/notify` and `POST /outlook/lifecycle` under hostile input:
forged or stale push tokens, foreign clientStates, garbage bodies and query strings. Never a
5xx or an internal detail, JSON errors for refusals, nothing queued for anything not proven
to come from the provider, and no Graph or Gmail call made because of it."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.hostile import strategies as hs
from tests.hostile.checks import assert_error_json, assert_sane, read
from tests.hostile.world import Tenant, World
from tests.support import google as g
from tests.support.google import Google, SigningKey

pytestmark = pytest.mark.asyncio(loop_scope="package")
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
STRANGER_KEY = SigningKey.generate()


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@st.composite
def forged_tokens(draw: st.DrawFn, google: Google) -> str:
    """Push tokens Pub/Sub did not issue for us: wrong key, wrong or stale claims, or no JWT at all."""
    # Times are drawn as offsets from now: a strategy must not change between two runs.
    late, early = st.integers(60, 10**7), st.integers(60, 10**7)
    bad_claims = st.one_of(
        late.map(lambda ago: {"exp": int(time.time()) - ago}),  # expired, past the allowed skew
        early.map(lambda ahead: {"iat": int(time.time()) + ahead, "exp": int(time.time()) + ahead + 3600}),
        st.fixed_dictionaries({"aud": st.one_of(st.text(max_size=30), st.just(g.PUSH_AUDIENCE + "/"))}),
        st.fixed_dictionaries({"iss": st.sampled_from(["https://evil.example", "accounts.google.com.evil", ""])}),
        st.fixed_dictionaries({"email": st.one_of(st.text(max_size=20), st.just(g.PUSH_ACCOUNT.upper()))}),
        st.fixed_dictionaries({"email_verified": st.one_of(st.just(False), st.just("true"), st.none())}),
    )
    now = int(time.time())
    kind = draw(st.sampled_from(["claims", "stranger", "unsigned", "tampered", "garbage"]))
    if kind == "claims":
        return google.push_token(**draw(bad_claims))
    if kind == "stranger":
        return google.push_token(key=STRANGER_KEY, kid=draw(st.sampled_from([google.keys[0].kid, STRANGER_KEY.kid])))
    if kind == "unsigned":
        header = {"alg": draw(st.sampled_from(["none", "HS256", "RS256"])), "kid": google.keys[0].kid}
        claims = {"aud": g.PUSH_AUDIENCE, "email": g.PUSH_ACCOUNT, "email_verified": True, "exp": now + 600}
        return f"{_b64(header)}.{_b64(claims)}." + draw(st.sampled_from(["", "c2ln", _b64("x")]))
    if kind == "tampered":
        head, _claims, signature = google.push_token().split(".")
        claims = {"aud": g.PUSH_AUDIENCE, "email": "intruder@evil.example", "email_verified": True, "exp": now + 600}
        return f"{head}.{_b64(claims)}.{signature}"
    return draw(st.one_of(hs.header_values, st.sampled_from(["a.b.c", "..", "e30.e30.e30", "x" * 5000])))


def push_body(tenant: Tenant, history: int = 10**12) -> dict[str, Any]:
    return Google.push_body(tenant.gmail, history)


@FUZZ
@given(data=st.data(), body=st.one_of(st.none(), hs.bodies({"message": {"data": "e30=", "messageId": "1"}})))
async def test_gmail_push_without_a_genuine_token_is_401_and_queues_nothing(
    world: World, data: st.DataObject, body: bytes | None
):
    token = data.draw(st.one_of(st.none(), forged_tokens(world.google)))
    payload = body if body is not None else json.dumps(push_body(world.bob)).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    before = await world.effects()
    answer = await read(await world.client.post("/gmail/push", data=payload, headers=headers))
    assert_sane(answer, world.secrets)
    assert answer.status == 401, (answer.status, answer.body)
    assert_error_json(answer)
    assert await world.effects() == before


@FUZZ
@given(body=hs.bodies(Google.push_body("nobody@gmail.example", 10**12)))
async def test_gmail_push_bodies_that_are_not_a_gmail_push_are_400(world: World, body: bytes):
    headers = {"Authorization": f"Bearer {world.google.push_token()}", "Content-Type": "application/json"}
    before = await world.effects()
    answer = await read(await world.client.post("/gmail/push", data=body, headers=headers))
    assert_sane(answer, world.secrets)
    # An address nobody connected is acknowledged and dropped (Pub/Sub would retry anything else).
    assert answer.status in (204, 400, 413), (answer.status, answer.body)
    if answer.status != 204:
        assert_error_json(answer)
    assert await world.effects() == before


def notification_items(world: World, tenant: Tenant) -> list[dict[str, Any]]:
    assert tenant.subscription is not None
    return [
        world.graph.notification(tenant.subscription),
        world.graph.lifecycle_item(tenant.subscription, "reauthorizationRequired"),
    ]


@st.composite
def foreign_items(draw: st.DrawFn, world: World) -> list[Any]:
    """Notification and lifecycle items whose clientState is not the one Graph was given."""
    bob = notification_items(world, world.bob)
    items = []
    for _ in range(draw(st.integers(0, 3))):
        item = draw(st.one_of(hs.mutated(draw(st.sampled_from(bob))), hs.json_values))
        if isinstance(item, dict):
            assert world.alice.subscription is not None
            alices = world.alice.subscription.body["clientState"]
            wrong = st.one_of(st.text(max_size=40), hs.json_values, st.just(alices))
            item["clientState"] = draw(wrong)
            if draw(st.booleans()):
                item.pop("clientState")
        items.append(item)
    return items


@FUZZ
@given(data=st.data(), path=st.sampled_from(["/outlook/notify", "/outlook/lifecycle"]), query=hs.query_strings())
async def test_outlook_items_without_their_client_state_queue_nothing(
    world: World, data: st.DataObject, path: str, query: str
):
    items = data.draw(foreign_items(world))
    forged = [
        {**item, "clientState": "forged-" + item["clientState"][7:]} for item in notification_items(world, world.bob)
    ]
    bent = hs.bodies({"value": forged})
    body = data.draw(st.one_of(st.just(json.dumps({"value": items}).encode()), bent))
    if "validationToken" in query:
        return
    before = await world.effects()
    url = URL(f"{path}?{query}", encoded=True)
    answer = await read(await world.client.post(url, data=body, headers={"Content-Type": "application/json"}))
    assert_sane(answer, world.secrets)
    assert answer.status in (202, 400, 413), (answer.status, answer.body)
    if answer.status != 202:
        assert_error_json(answer)
    assert await world.effects() == before
    assert world.bob.subscription is not None
    assert world.graph.subscriptions.get(world.bob.subscription.id) is world.bob.subscription


@FUZZ
@given(
    path=st.sampled_from(["/outlook/notify", "/outlook/lifecycle"]),
    token=st.text(max_size=200),
    body=st.one_of(st.none(), hs.bodies({"value": []})),
    content_type=hs.content_types,
)
async def test_outlook_validation_echoes_exactly_the_token_as_plain_text(
    world: World, path: str, token: str, body: bytes | None, content_type: str | None
):
    headers = {"Content-Type": content_type} if content_type else {}
    before = await world.effects()
    url = URL(path).with_query({"validationToken": token})
    answer = await read(await world.client.post(url, data=body, headers=headers))
    assert answer.status == 200, (answer.status, answer.body)
    assert answer.content_type == "text/plain"
    assert answer.headers.get("x-content-type-options") == "nosniff"
    assert answer.body == token.encode()
    assert await world.effects() == before


@pytest.mark.parametrize("sub_id", [[], {}, ["a"], 7, None, True])
async def test_a_subscription_id_that_is_not_a_string_is_dropped_not_a_500(world: World, sub_id: Any):
    assert world.bob.subscription is not None
    item = {**world.graph.notification(world.bob.subscription), "subscriptionId": sub_id}
    before = await world.effects()
    for path in ("/outlook/notify", "/outlook/lifecycle"):
        answer = await read(await world.client.post(path, json={"value": [item]}))
        assert answer.status == 202, answer.body
    assert await world.effects() == before
