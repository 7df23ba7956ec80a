from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from channels.outlook import OUTLOOK
from channels.outlook.subscriptions import LIFETIME, RENEW_AHEAD, Subscriptions, state_hash
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway
from tests.support.graph import Graph, GraphSubscription
from tests.support.mail import GatewayFactory, connect_outlook, events_of, grant_dies, queued_of
from tests.support.redis_servers import RedisServer


def subs(gw: Gateway) -> Subscriptions:
    found: Subscriptions = gw.client.app[OUTLOOK].subscriptions
    return found


async def connect(gw: Gateway, graph: Graph, dedicated: DedicatedServer, user: str) -> str:
    await connect_outlook(gw, graph, dedicated, user)
    return user


async def queued(gw: Gateway, user: str) -> int:
    return await queued_of(gw, user, "outlook.")


def outlook_events(dedicated: DedicatedServer, user: str) -> list[dict[str, Any]]:
    return events_of(dedicated, user, "outlook.")


def only(graph: Graph, owner: str) -> GraphSubscription:
    found = graph.of(owner)
    assert len(found) == 1, found
    return found[0]


async def state(gw: Gateway, user: str) -> dict[str, str]:
    raw = await gw.services.redis.hgetall(gw.services.keys.user_key(user, "outlook"))
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"account"}


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def true(value: bool) -> bool:
    return value


async def test_connect_creates_a_validated_inbox_subscription(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "ann")
    sub = only(graph, "ann")
    public = mail.settings.public_url
    assert sub.body["resource"] == "/me/mailFolders('inbox')/messages"
    assert sub.body["changeType"] == "created"
    assert sub.body["notificationUrl"] == f"{public}/outlook/notify"
    assert sub.body["lifecycleNotificationUrl"] == f"{public}/outlook/lifecycle"
    assert len(sub.body["clientState"]) >= 32
    # Graph's handshake reached both endpoints and got the decoded token back as text/plain.
    assert [(v[0].rsplit("/", 1)[1], v[1], v[2]) for v in graph.validations] == [
        ("notify", 200, "text/plain"),
        ("lifecycle", 200, "text/plain"),
    ]
    assert all(v[3].startswith("Validation: Testing client application reachability") for v in graph.validations)
    lifetime = sub.expires.timestamp() - time.time()
    assert LIFETIME - 120 < lifetime <= 10_080 * 60
    st = await state(mail, "ann")
    assert st["status"] == "active" and st["sub_id"] == sub.id
    # The clientState itself is not stored, only its hash.
    index = await mail.services.redis.hgetall(mail.services.keys.global_key(f"outlook:sub:{sub.id}"))
    assert index == {b"user": b"ann", b"state": state_hash(sub.body["clientState"]).encode()}
    due = await subs(mail).due.due_at("ann")
    assert due is not None and abs(due - (sub.expires.timestamp() - RENEW_AHEAD)) < 5


@pytest.mark.parametrize("path", ["/outlook/notify", "/outlook/lifecycle"])
async def test_validation_token_is_echoed_decoded_as_plain_text(mail, path):
    resp = await mail.client.post(path + "?validationToken=Validation%3A%20a%2Bb%26c%3Cscript%3E")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert await resp.text() == "Validation: a+b&c<script>"


async def test_notification_is_queued_without_client_state(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "bob")
    sub = only(graph, "bob")
    item = graph.notification(sub)
    resp = await graph.notify([item], sub)
    assert resp.status == 202
    await dedicated.wait_for(lambda: len(outlook_events(dedicated, "bob")) == 1)
    event = outlook_events(dedicated, "bob")[0]
    assert event["type"] == "outlook.notification" and event["channel"] == "outlook"
    expected = {k: v for k, v in item.items() if k != "clientState"}
    assert event["payload"] == expected
    assert "clientState" not in event["payload"]


async def test_bad_client_state_items_are_dropped_good_ones_queued(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "cat")
    dedicated.mode["cat"] = "down"
    sub = only(graph, "cat")
    before = sample("ally_webhook_rejected_total", channel="outlook", reason="bad_client_state")
    good = graph.notification(sub)
    forged = graph.notification(sub, clientState="guessed-" + sub.body["clientState"][8:])
    missing = graph.notification(sub)
    del missing["clientState"]
    wrong_type = graph.notification(sub, clientState=12345)
    resp = await graph.notify([forged, good, missing, wrong_type], sub)
    assert resp.status == 202
    assert await queued(mail, "cat") == 1
    assert sample("ally_webhook_rejected_total", channel="outlook", reason="bad_client_state") - before == 3


async def test_repeated_notification_is_queued_once(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "dan")
    dedicated.mode["dan"] = "down"
    sub = only(graph, "dan")
    item = graph.notification(sub, message_id="AAMkAGUAAAwTW09AAA=")
    for _ in range(3):
        assert (await graph.notify([item], sub)).status == 202
    assert (await graph.notify([graph.notification(sub)], sub)).status == 202
    assert await queued(mail, "dan") == 2


async def test_unknown_subscription_is_acknowledged_and_dropped(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "eve")
    sub = only(graph, "eve")
    before = sample("ally_inbound_dropped_total", channel="outlook", reason="unknown_subscription")
    item = graph.notification(sub, subscriptionId="00000000-0000-0000-0000-000000000000")
    assert (await graph.notify([item], sub)).status == 202
    assert sample("ally_inbound_dropped_total", channel="outlook", reason="unknown_subscription") - before == 1


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"value": 3}', b'{"value": [1]}', b""],
    ids=["garbage", "list", "value-number", "value-of-numbers", "empty"],
)
async def test_malformed_notification_is_400(mail, body):
    for path in ("/outlook/notify", "/outlook/lifecycle"):
        resp = await mail.client.post(path, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert (await resp.json())["error"] in ("invalid_json", "invalid_notification")


async def test_missed_lifecycle_event_sends_resync_at_once(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "fay")
    sub = only(graph, "fay")
    resp = await graph.lifecycle([graph.lifecycle_item(sub, "missed")], sub)
    assert resp.status == 202
    await dedicated.wait_for(lambda: len(outlook_events(dedicated, "fay")) == 1)
    event = outlook_events(dedicated, "fay")[0]
    assert event["type"] == "outlook.resync_required"
    assert event["payload"] == {"reason": "missed", "subscription_id": sub.id}


async def test_lifecycle_with_bad_client_state_changes_nothing(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "gus")
    sub = only(graph, "gus")
    items = [graph.lifecycle_item(sub, e, clientState="forged") for e in ("missed", "subscriptionRemoved")]
    assert (await graph.lifecycle(items, sub)).status == 202
    await asyncio.sleep(0.3)
    assert outlook_events(dedicated, "gus") == []
    assert graph.count("create", "gus") == 1
    assert "action" not in await state(mail, "gus")


async def test_reauthorization_is_left_to_the_worker(start_gateway: GatewayFactory, graph, dedicated):
    web = await start_gateway(role="web")
    await connect(web, graph, dedicated, "hal")
    sub = only(graph, "hal")
    resp = await graph.lifecycle([graph.lifecycle_item(sub, "reauthorizationRequired")], sub)
    assert resp.status == 202
    # The request path never calls Graph.
    await asyncio.sleep(0.3)
    assert graph.count("reauthorize", "hal") == 0
    assert (await state(web, "hal"))["action"] == "reauthorize"
    await start_gateway(role="worker")
    await wait_until(lambda: true(graph.count("reauthorize", "hal") == 1))
    await wait_until(lambda: _no_action(web, "hal"))
    assert graph.count("renew", "hal") == 0
    assert only(graph, "hal").id == sub.id


async def test_removed_subscription_is_recreated_then_resync_sent(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "ivy")
    old = only(graph, "ivy")
    graph.remove(old)
    resp = await graph.lifecycle([graph.lifecycle_item(old, "subscriptionRemoved")], old)
    assert resp.status == 202
    await wait_until(lambda: true(len(graph.of("ivy")) == 1))
    new = only(graph, "ivy")
    assert new.id != old.id
    assert new.body["clientState"] != old.body["clientState"]
    await dedicated.wait_for(lambda: len(outlook_events(dedicated, "ivy")) == 1)
    event = outlook_events(dedicated, "ivy")[0]
    assert event["type"] == "outlook.resync_required"
    assert event["payload"] == {"reason": "subscription_removed", "subscription_id": new.id}
    # The old subscription's notifications are no longer accepted; the new one's are.
    assert (await graph.notify([graph.notification(old)], new)).status == 202
    assert (await graph.notify([graph.notification(new)], new)).status == 202
    await dedicated.wait_for(lambda: len(outlook_events(dedicated, "ivy")) == 2)
    assert outlook_events(dedicated, "ivy")[1]["payload"]["subscriptionId"] == new.id


async def test_due_renewal_extends_the_subscription_once_across_two_workers(
    start_gateway: GatewayFactory, graph, dedicated
):
    web = await start_gateway(role="web")
    users = [f"w{n}" for n in range(10)]
    for user in users:
        await connect(web, graph, dedicated, user)
    before = {u: only(graph, u).expires for u in users}
    await start_gateway(role="worker")
    await start_gateway(role="worker")
    for user in users:
        await subs(web).due.put(user, time.time())
    await wait_until(lambda: true(graph.count("renew") == len(users)))
    await asyncio.sleep(0.5)
    assert graph.count("renew") == len(users)
    for user in users:
        assert only(graph, user).expires > before[user]
        due = await subs(web).due.due_at(user)
        assert due is not None and due > time.time() + 24 * 3600


async def test_subscription_gone_at_renewal_is_recreated_with_resync(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "jon")
    old = only(graph, "jon")
    graph.remove(old)
    await subs(mail).due.put("jon", time.time())
    await wait_until(lambda: true(len(graph.of("jon")) == 1))
    await dedicated.wait_for(lambda: len(outlook_events(dedicated, "jon")) == 1)
    event = outlook_events(dedicated, "jon")[0]
    assert event["payload"] == {"reason": "subscription_lapsed", "subscription_id": only(graph, "jon").id}


async def test_failing_renewal_backs_off(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "kim")
    graph.fail["renew"] = 503
    await subs(mail).due.put("kim", time.time())
    await wait_until(lambda: _status(mail, "kim", "failing"))
    st = await state(mail, "kim")
    assert st["last_error"] == "graph_503_ServiceUnavailable"
    due = await subs(mail).due.due_at("kim")
    assert due is not None and due - time.time() > 30
    assert graph.count("renew", "kim") == 1


async def test_dead_grant_pauses_upkeep_and_reconnect_resumes_with_resync(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "lee")
    await grant_dies(mail, "lee", "microsoft")
    await subs(mail).due.put("lee", time.time())
    await wait_until(lambda: _status(mail, "lee", "reauth_required"))
    assert await subs(mail).due.due_at("lee") is None
    await asyncio.sleep(0.3)
    assert graph.count("renew", "lee") == 0
    await connect(mail, graph, dedicated, "lee")
    assert graph.count("renew", "lee") == 1
    await dedicated.wait_for(lambda: len(outlook_events(dedicated, "lee")) == 1)
    assert outlook_events(dedicated, "lee")[0]["payload"]["reason"] == "subscription_lapsed"


async def test_disconnect_deletes_the_subscription(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "max")
    sub = only(graph, "max")
    await mail.broker.disconnect("max", "microsoft")
    assert graph.of("max") == []
    assert graph.count("delete", "max") == 1
    assert not await mail.services.redis.exists(mail.services.keys.global_key(f"outlook:sub:{sub.id}"))
    assert await subs(mail).due.due_at("max") is None


async def test_erasure_deletes_the_subscription(mail, graph, dedicated):
    await connect(mail, graph, dedicated, "ned")
    sub = only(graph, "ned")
    assert (await mail.admin("DELETE", "/admin/v1/users/ned")).status == 202
    await mail.services.eraser.wait("ned")
    assert graph.of("ned") == []
    assert not await mail.services.redis.exists(mail.services.keys.global_key(f"outlook:sub:{sub.id}"))


@pytest.mark.slow
async def test_queueing_failure_answers_503_and_the_retry_is_queued_once(
    start_gateway: GatewayFactory, graph, dedicated, tmp_path: Path
):
    redis = RedisServer(tmp_path / "redis", appendonly=False)
    await asyncio.to_thread(redis.start)
    admin = Redis.from_url(redis.url)
    try:
        gw = await start_gateway(redis_url=redis.url)
        await connect(gw, graph, dedicated, "oz")
        dedicated.mode["oz"] = "down"
        sub = only(graph, "oz")
        item = graph.notification(sub)
        # Redis refuses writes (out of memory) but still answers reads.
        await admin.config_set("maxmemory", "1")
        resp = await graph.notify([item], sub)
        assert resp.status == 503
        await admin.config_set("maxmemory", "0")
        assert (await graph.notify([item], sub)).status == 202
        assert (await graph.notify([item], sub)).status == 202
        assert await queued(gw, "oz") == 1
    finally:
        await admin.aclose()
        await asyncio.to_thread(redis.stop)


async def _no_action(gw: Gateway, user: str) -> bool:
    return "action" not in await state(gw, user)


async def _status(gw: Gateway, user: str, status: str) -> bool:
    return (await state(gw, user)).get("status") == status


async def test_upkeep_outcomes_are_counted(mail, graph, dedicated):
    before_ok = sample("ally_mail_upkeep_total", channel="outlook", outcome="ok")
    before_failed = sample("ally_mail_upkeep_total", channel="outlook", outcome="failed")
    await connect(mail, graph, dedicated, "pam")
    assert sample("ally_mail_upkeep_total", channel="outlook", outcome="ok") - before_ok == 1
    graph.fail["renew"] = 503
    await subs(mail).due.put("pam", time.time())
    await wait_until(lambda: _status(mail, "pam", "failing"))
    assert sample("ally_mail_upkeep_total", channel="outlook", outcome="failed") - before_failed == 1
