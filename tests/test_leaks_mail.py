"""The leak test for Gmail and Outlook: mailbox addresses, message ids, OAuth tokens, Pub/Sub JWTs
and Graph clientState, with the user's server down part of the time; none of them in Redis, the
AOF or the logs (see tests/test_leaks.py for the other channels)."""

from __future__ import annotations

import io
import time

import pytest

from oauth.providers import Grant
from oauth.store import Tokens
from tests.support.dedicated import DedicatedServer
from tests.support.erasure import wait_gone
from tests.support.google import Google
from tests.support.graph import Graph
from tests.support.leaks import Markers, assert_nothing_leaked, log_output
from tests.support.mail import (
    GMAIL_SCOPES,
    GRAPH_SCOPES,
    GatewayFactory,
    connect_gmail,
    connect_outlook,
    google,
    graph,
    start_gateway,
)
from tests.support.redis_servers import RedisServer
from tests.support.redisdump import containing, dump
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow
__all__ = ["google", "graph", "log_output", "start_gateway"]

USER = "mailbox-owner"


async def test_no_marker_from_gmail_or_outlook_reaches_redis_the_aof_or_the_logs(
    start_gateway: GatewayFactory,
    google: Google,
    graph: Graph,
    dedicated: DedicatedServer,
    redis_server: RedisServer,
    log_output: io.StringIO,
):
    gw = await start_gateway(redis_url=redis_server.url)
    m = Markers()
    created = await gw.create_user(dedicated, USER)
    m.secret("server_token", created["server_token"])
    m.secret("webhook_secret", created["webhook_secret"].removeprefix("whsec_"))
    m.secret("google_client_secret", gw.settings.google_client_secret or "")
    m.secret("microsoft_client_secret", gw.settings.microsoft_client_secret or "")
    dedicated.mode[USER] = "down"

    # Gmail: the grant, a watch, a push for the mailbox, a forged push.
    address = f"{m('gmail_address')}@gmail.example"
    access = m.secret("gmail_access_token", google.mailbox(address))
    refresh = m.secret("gmail_refresh_token", google.refresh_token(address))
    tokens = Tokens(access_token=access, expires_at=time.time() + 3599, refresh_token=refresh, scopes=GMAIL_SCOPES)
    await gw.broker.connected(USER, "google", Grant(address, tokens))
    await eventually(lambda: google.count("watch", address) >= 1)
    jwt = m.secret("pubsub_jwt", google.push_token())
    body = google.push_body(address, google.change(address))
    resp = await gw.client.post("/gmail/push", json=body, headers={"Authorization": f"Bearer {jwt}"})
    assert resp.status == 204
    forged = m("forged_push_token")
    resp = await gw.client.post("/gmail/push", json=body, headers={"Authorization": f"Bearer {forged}"})
    assert resp.status == 401

    # Outlook: the grant, a validated subscription, a notification, a forged clientState.
    account = f"{m('outlook_account')}@outlook.example"
    graph_token = m.secret("graph_access_token", graph.mailbox(USER))
    tokens = Tokens(access_token=graph_token, expires_at=time.time() + 3599, scopes=GRAPH_SCOPES)
    await gw.broker.connected(USER, "microsoft", Grant(account, tokens))
    await eventually(lambda: len(graph.of(USER)) == 1)
    sub = graph.of(USER)[0]
    m.secret("client_state", str(sub.body["clientState"]))
    message_id = m("graph_message_id")
    assert (await graph.notify([graph.notification(sub, message_id=message_id)], sub)).status == 202
    bad = graph.notification(sub, message_id=m("forged_message_id"), clientState=m("forged_client_state"))
    assert (await graph.notify([bad], sub)).status == 202

    dedicated.mode[USER] = "ok"
    auth = {"Authorization": f"Bearer {created['server_token']}"}
    assert (await gw.client.post("/v1/ping", headers=auth)).status == 200
    await dedicated.wait_for(
        lambda: {"gmail.notification", "outlook.notification"} <= {e["type"] for e in dedicated.events(USER)}
    )
    delivered = str([e["payload"] for e in dedicated.events(USER)])
    assert address in delivered
    assert message_id in delivered
    assert m.all  # every marker above is searched for
    await assert_nothing_leaked(m, redis_server, log_output)


async def test_erasure_stops_the_gmail_watch_and_deletes_the_graph_subscription(
    start_gateway: GatewayFactory, google: Google, graph: Graph, dedicated: DedicatedServer
):
    gw = await start_gateway()
    user = "mail-erased"
    address = await connect_gmail(gw, google, dedicated, user)
    await connect_outlook(gw, graph, dedicated, user)
    await eventually(lambda: google.count("watch", address) >= 1 and len(graph.of(user)) == 1)
    assert (await gw.admin("DELETE", f"/admin/v1/users/{user}")).status == 202
    await wait_gone(gw, user)
    assert google.count("stop", address) >= 1
    assert graph.of(user) == []
    snapshot = await dump(gw.services.redis, gw.settings.key_prefix)
    assert containing(snapshot, user.encode()) == []
    assert containing(snapshot, address.encode()) == []
