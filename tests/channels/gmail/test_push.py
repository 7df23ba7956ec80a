from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway
from tests.support.google import Google, SigningKey
from tests.support.mail import connect_gmail, events_of, queued_of


async def connect(gw: Gateway, google: Google, dedicated: DedicatedServer, user: str) -> str:
    return await connect_gmail(gw, google, dedicated, user)


async def push(gw: Gateway, body: Any, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return await gw.client.post("/gmail/push", json=body, headers=headers)


async def queued(gw: Gateway, user: str) -> int:
    return await queued_of(gw, user, "gmail.")


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("ally_inbound_dropped_total", {"channel": "gmail", "reason": reason}) or 0.0


async def test_push_is_queued_sealed_and_delivered(mail: Gateway, google: Google, dedicated):
    address = await connect(mail, google, dedicated, "ann")
    history = google.change(address)
    resp = await push(mail, google.push_body(address, history), google.push_token())
    assert resp.status == 204
    await dedicated.wait_for(lambda: len(events_of(dedicated, "ann", "gmail.")) == 1)
    event = events_of(dedicated, "ann", "gmail.")[0]
    assert event["type"] == "gmail.notification"
    assert event["channel"] == "gmail"
    assert event["payload"] == {"email_address": address, "history_id": str(history)}


async def test_numeric_history_id_as_gmail_publishes_it_is_accepted(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "num")
    dedicated.mode["num"] = "down"
    history = google.change(address)
    resp = await push(mail, google.push_body(address, int(history)), google.push_token())
    assert resp.status == 204
    assert await queued(mail, "num") == 1


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": int(time.time()) - 120, "iat": int(time.time()) - 3720}, "invalid_token"),
        ({"aud": "https://someone-else.example/push"}, "invalid_token"),
        ({"email": "intruder@evil.iam.gserviceaccount.com"}, "invalid_token"),
        ({"email_verified": False}, "invalid_token"),
        ({"email_verified": None}, "invalid_token"),
        ({"iss": "https://evil.example"}, "invalid_token"),
        ({"exp": None}, "invalid_token"),
    ],
    ids=["expired", "wrong-audience", "wrong-email", "unverified-email", "no-email-verified", "wrong-issuer", "no-exp"],
)
async def test_push_with_a_bad_token_is_401_and_not_queued(mail, google, dedicated, claims, code):
    address = await connect(mail, google, dedicated, "bob")
    dedicated.mode["bob"] = "down"
    resp = await push(mail, google.push_body(address, google.change(address)), google.push_token(**claims))
    assert resp.status == 401
    assert (await resp.json())["error"] == code
    assert await queued(mail, "bob") == 0


async def test_push_without_or_with_garbage_authorization_is_401(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "cat")
    dedicated.mode["cat"] = "down"
    body = google.push_body(address, google.change(address))
    for token in (None, "not-a-jwt", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", ""):
        resp = await push(mail, body, token)
        assert resp.status == 401, token
        assert (await resp.json())["error"] in ("unauthorized", "invalid_token")
    assert await queued(mail, "cat") == 0


async def test_forged_signature_under_a_known_key_id_is_401(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "dan")
    dedicated.mode["dan"] = "down"
    forger = SigningKey.generate()
    token = google.push_token(key=forger, kid=google.keys[0].kid)
    resp = await push(mail, google.push_body(address, google.change(address)), token)
    assert resp.status == 401
    assert await queued(mail, "dan") == 0


async def test_certs_are_cached_and_refetched_for_a_new_key_id(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "eve")
    dedicated.mode["eve"] = "down"
    for _ in range(5):
        resp = await push(mail, google.push_body(address, google.change(address)), google.push_token())
        assert resp.status == 204
    assert google.cert_fetches == 1
    # Google rotates its keys: a token under the new kid makes the gateway look again, once.
    google.keys.insert(0, SigningKey.generate())
    resp = await push(mail, google.push_body(address, google.change(address)), google.push_token())
    assert resp.status == 204
    assert google.cert_fetches == 2
    # An unknown kid within the refetch gap is refused without hammering the endpoint.
    stranger = SigningKey.generate()
    for _ in range(3):
        resp = await push(mail, google.push_body(address, google.change(address)), google.push_token(key=stranger))
        assert resp.status == 401
    assert google.cert_fetches == 2
    assert await queued(mail, "eve") == 6


async def test_duplicate_message_id_is_acknowledged_and_queued_once(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "fay")
    dedicated.mode["fay"] = "down"
    body = google.push_body(address, google.change(address), message_id="2070443601311540")
    before = dropped("duplicate") + dropped("stale_history")
    for _ in range(3):
        assert (await push(mail, body, google.push_token())).status == 204
    assert await queued(mail, "fay") == 1
    assert dropped("duplicate") + dropped("stale_history") - before == 2
    # A process that died after queueing but before recording the historyId: Pub/Sub's retry
    # is still recognised by its messageId.
    await mail.services.redis.hdel(mail.services.keys.user_key("fay", "gmail"), "last_history_id")
    before = dropped("duplicate")
    assert (await push(mail, body, google.push_token())).status == 204
    assert await queued(mail, "fay") == 1
    assert dropped("duplicate") - before == 1


async def test_history_id_not_above_the_last_forwarded_is_dropped(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "gus")
    dedicated.mode["gus"] = "down"
    newer = google.change(address)
    older = newer - 5
    before = dropped("stale_history")
    assert (await push(mail, google.push_body(address, newer), google.push_token())).status == 204
    assert (await push(mail, google.push_body(address, older), google.push_token())).status == 204
    assert (await push(mail, google.push_body(address, newer), google.push_token())).status == 204
    assert await queued(mail, "gus") == 1
    assert dropped("stale_history") - before == 2
    # Far above 2**53: compared exactly.
    big = "18446744073709551610"
    assert (await push(mail, google.push_body(address, big), google.push_token())).status == 204
    assert (await push(mail, google.push_body(address, "18446744073709551609"), google.push_token())).status == 204
    assert await queued(mail, "gus") == 2


@pytest.mark.parametrize(
    "huge", ["18446744073709551616", "99999999999999999999", 10**20 - 1], ids=["2**64", "20-digits", "number"]
)
async def test_a_history_id_above_64_bits_is_acknowledged_and_never_stored(mail, google, dedicated, huge: Any):
    address = await connect(mail, google, dedicated, "max")
    dedicated.mode["max"] = "down"
    before = dropped("history_id_out_of_range")
    # A 2xx: Pub/Sub would redeliver a 4xx until the message expires, and it can never become valid.
    assert (await push(mail, google.push_body(address, huge), google.push_token())).status == 204
    assert await queued(mail, "max") == 0
    assert dropped("history_id_out_of_range") - before == 1
    state = mail.services.keys.user_key("max", "gmail")
    assert await mail.services.redis.hget(state, "last_history_id") is None
    # The largest valid one, and then the mailbox's real changes, still go through.
    top = str(2**64 - 1)
    assert (await push(mail, google.push_body(address, top), google.push_token())).status == 204
    assert await queued(mail, "max") == 1
    assert await mail.services.redis.hget(state, "last_history_id") == top.encode()


async def test_unknown_address_is_acknowledged_dropped_and_counted(mail, google):
    before = dropped("unknown_address")
    resp = await push(mail, google.push_body("nobody@gmail.example", 77), google.push_token())
    assert resp.status == 204
    assert dropped("unknown_address") - before == 1


async def test_address_lookup_ignores_case(mail, google, dedicated):
    address = await connect(mail, google, dedicated, "hal")
    dedicated.mode["hal"] = "down"
    resp = await push(mail, google.push_body(address.upper(), google.change(address)), google.push_token())
    assert resp.status == 204
    assert await queued(mail, "hal") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"subscription": "projects/p/subscriptions/s"},
        {"message": {"messageId": "1", "data": "!!!not base64!!!"}},
        {"message": {"messageId": "1", "data": "eyJmb28iOiAxfQ=="}},
        {"message": {"data": "eyJlbWFpbEFkZHJlc3MiOiAiYUBiLmMiLCAiaGlzdG9yeUlkIjogMX0="}},
        {"message": {"messageId": "1", "data": "eyJlbWFpbEFkZHJlc3MiOiAiYUBiLmMiLCAiaGlzdG9yeUlkIjogLTF9"}},
        {"message": "x"},
        [1, 2],
    ],
    ids=["no-message", "bad-base64", "no-gmail-fields", "no-message-id", "negative-history", "message-string", "list"],
)
async def test_malformed_push_is_400_and_not_queued(mail, google, body):
    resp = await push(mail, body, google.push_token())
    assert resp.status == 400
    assert (await resp.json())["error"] in ("invalid_push", "invalid_json")


async def test_push_log_lines_hold_no_address_or_token(mail, google, dedicated, caplog):
    address = await connect(mail, google, dedicated, "ivy")
    token = google.push_token()
    with caplog.at_level("DEBUG"):
        await push(mail, google.push_body(address, google.change(address)), token)
        await push(mail, google.push_body(address, 1), google.push_token(aud="x"))
    text = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert address not in text
    assert token not in text
