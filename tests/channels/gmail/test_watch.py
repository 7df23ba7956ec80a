from __future__ import annotations

import asyncio
import time

from channels.gmail import GMAIL
from channels.gmail.watches import Watches, address_hash
from oauth.providers import Grant
from oauth.store import Tokens
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway
from tests.support.google import TOPIC, Google
from tests.support.mail import GMAIL_SCOPES, GatewayFactory, connect_gmail, events_of, expire_access_token


def watches(gw: Gateway) -> Watches:
    found: Watches = gw.client.app[GMAIL].watches
    return found


async def connect(gw: Gateway, google: Google, dedicated: DedicatedServer, user: str) -> str:
    return await connect_gmail(gw, google, dedicated, user)


async def state(gw: Gateway, user: str) -> dict[str, str]:
    raw = await gw.services.redis.hgetall(gw.services.keys.user_key(user, "gmail"))
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"account"}


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_connect_starts_an_inbox_watch_on_the_topic(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "ann")
    box = google.mailboxes[address]
    assert box.watch is not None and box.watch["topic"] == TOPIC
    assert google.count("watch", address) == 1
    st = await state(mail, "ann")
    assert st["status"] == "active"
    assert st["history_id"] == str(box.history_id)
    assert int(st["expiration"]) == box.watch["expiration"]
    # Renewed daily: the next renewal is due about a day from now.
    due = await watches(mail).due.due_at("ann")
    assert due is not None and 23 * 3600 < due - time.time() <= 24 * 3600
    resp = await mail.admin("GET", "/admin/v1/users/ann")
    gmail = (await resp.json())["gmail"]
    assert gmail["watch"] == "active" and gmail["expires_at"].endswith("Z")


async def test_due_renewal_is_made_by_the_worker_loop(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "bob")
    await watches(mail).due.put("bob", time.time())
    await wait_until(lambda: _async(google.count("watch", address) == 2))
    await wait_until(lambda: _due_later(mail, "bob"))


async def test_two_workers_renew_each_due_watch_exactly_once(start_gateway: GatewayFactory, google, dedicated):
    web = await start_gateway(role="web")
    users = [f"u{n}" for n in range(12)]
    for user in users:
        await connect(web, google, dedicated, user)
    assert google.count("watch") == len(users)
    workers = [await start_gateway(role="worker"), await start_gateway(role="worker")]
    now = time.time()
    for user in users:
        await watches(web).due.put(user, now)
    # Done means every renewal was recorded: each next one is due a day later, so neither loop
    # has anything left to claim, and any second renewal would already have been made.
    for user in users:
        await wait_until(lambda user=user: _due_later(web, user))
    for user in users:
        assert google.count("watch", f"{user}@gmail.example") == 2, user
    assert workers


async def test_a_claim_abandoned_by_a_crashed_worker_is_renewed_after_its_lease(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "cid")
    due = watches(mail).due
    await due.put("cid", time.time())
    # Another process claimed the renewal and died holding it (lease 2 s in these tests).
    claim = await due.hold("cid")
    assert claim is not None
    await asyncio.sleep(0.5)
    assert google.count("watch", address) == 1
    await wait_until(lambda: _async(google.count("watch", address) == 2), timeout=10)
    # The dead holder's late finish changes nothing.
    await wait_until(lambda: _due_later(mail, "cid"))
    assert await due.finish(claim, time.time()) is False
    assert (await due.due_at("cid") or 0) > time.time() + 3600


async def test_dead_grant_pauses_renewal_and_reconnect_sends_resync(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "dee")
    # The user removes the app's access at Google; the next renewal needs a refresh, which fails.
    google.revoke_all(address)
    await expire_access_token(mail, "dee", "google")
    await watches(mail).due.put("dee", time.time())
    await wait_until(lambda: _status_is(mail, "dee", "reauth_required"))
    connection = await mail.broker.connection("dee", "google")
    assert connection is not None and connection.status == "reauth_required"
    # No crash loop: not scheduled any more, no further calls.
    assert await watches(mail).due.due_at("dee") is None
    refreshes = google.refreshes
    await asyncio.sleep(0.3)
    assert google.count("watch", address) == 1
    assert google.refreshes == refreshes
    await dedicated.wait_for(
        lambda: any(e["payload"]["status"] == "reauth_required" for e in events_of(dedicated, "dee", "connection."))
    )
    # The user reconnects: the watch comes back and the server is told to resync, once.
    await connect(mail, google, dedicated, "dee")
    assert google.count("watch", address) == 2
    await dedicated.wait_for(lambda: len(events_of(dedicated, "dee", "gmail.")) == 1)
    event = events_of(dedicated, "dee", "gmail.")[0]
    assert event["type"] == "gmail.resync_required"
    assert event["payload"]["email_address"] == address
    assert event["payload"]["history_id"] == str(google.mailboxes[address].history_id)
    assert event["payload"]["reason"] == "watch_lapsed"
    await watches(mail).due.put("dee", time.time())
    await wait_until(lambda: _async(google.count("watch", address) == 3))
    await asyncio.sleep(0.2)
    assert len(events_of(dedicated, "dee", "gmail.")) == 1


async def test_expired_access_token_is_refreshed_by_the_broker_for_renewal(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "dex")
    await expire_access_token(mail, "dex", "google")
    await watches(mail).due.put("dex", time.time())
    await wait_until(lambda: _async(google.count("watch", address) == 2))
    assert google.refreshes == 1
    assert (await state(mail, "dex"))["status"] == "active"


async def test_watch_that_expired_while_renewals_failed_sends_one_resync(mail, google, dedicated):
    google.watch_ttl_ms = 300
    address = await connect(mail, google, dedicated, "eli")
    google.fail_watch = 503
    await watches(mail).due.put("eli", time.time())
    await wait_until(lambda: _status_is(mail, "eli", "failing"))
    st = await state(mail, "eli")
    assert st["failures"] == "1" and st["last_error"] == "gmail_503"
    # Backed off, not retried at once.
    due = await watches(mail).due.due_at("eli")
    assert due is not None and due - time.time() > 30
    await asyncio.sleep(0.4)  # the watch's expiration passes meanwhile
    google.fail_watch = None
    google.watch_ttl_ms = 7 * 24 * 3600 * 1000
    await watches(mail).due.put("eli", time.time())
    await wait_until(lambda: _status_is(mail, "eli", "active"))
    await dedicated.wait_for(lambda: len(events_of(dedicated, "eli", "gmail.")) == 1)
    assert events_of(dedicated, "eli", "gmail.")[0]["type"] == "gmail.resync_required"
    await watches(mail).due.put("eli", time.time())
    await wait_until(lambda: _async(google.count("watch", address) == 4))
    await asyncio.sleep(0.2)
    assert len(events_of(dedicated, "eli", "gmail.")) == 1


async def test_disconnect_stops_the_watch_and_forgets_the_address(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "fox")
    await mail.broker.disconnect("fox", "google")
    assert google.count("stop", address) == 1
    assert google.mailboxes[address].watch is None
    assert await mail.services.redis.get(mail.services.keys.global_key(f"gmail:addr:{address_hash(address)}")) is None
    assert await watches(mail).due.due_at("fox") is None
    assert await state(mail, "fox") == {}
    # The grant was revoked after the watch was stopped with it.
    assert google.refresh_tokens == {} or address not in google.refresh_tokens.values()


async def test_erasure_stops_the_watch_and_removes_the_address_index(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "gil")
    resp = await mail.admin("DELETE", "/admin/v1/users/gil")
    assert resp.status == 202
    await mail.services.eraser.wait("gil")
    assert google.count("stop", address) == 1
    index = mail.services.keys.global_key(f"gmail:addr:{address_hash(address)}")
    assert await mail.services.redis.get(index) is None
    assert await watches(mail).due.due_at("gil") is None


async def test_switching_mailbox_moves_the_index(mail, google, dedicated):
    old = await connect(mail, google, dedicated, "hue")
    new = "hue.other@gmail.example"
    tokens = Tokens(google.mailbox(new), time.time() + 3599, google.refresh_token(new), GMAIL_SCOPES)
    await mail.broker.connected("hue", "google", Grant(new, tokens))
    redis, keys = mail.services.redis, mail.services.keys
    assert await redis.get(keys.global_key(f"gmail:addr:{address_hash(old)}")) is None
    assert await redis.get(keys.global_key(f"gmail:addr:{address_hash(new)}")) == b"hue"
    # The old mailbox's watch was stopped with its own token before the switch.
    assert google.count("stop", old) == 1
    assert google.mailboxes[new].watch is not None


async def _async(value: bool) -> bool:
    return value


async def _due_later(gw: Gateway, user: str) -> bool:
    due = await watches(gw).due.due_at(user)
    return due is not None and due > time.time() + 3600


async def _status_is(gw: Gateway, user: str, status: str) -> bool:
    return (await state(gw, user)).get("status") == status
