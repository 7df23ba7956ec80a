"""Crypto agility (contract §9.6): the hybrid post-quantum suite, `kid` on every event, and a key
change that loses nothing held."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from foundation.config import Settings
from foundation.types import Event
from routing.handoff import Item
from routing.sealing import SUITES, SuiteName, info, kid_of, open_sealed, unb64url
from tests.support.dedicated import DedicatedServer, new_key
from tests.support.export import validate
from tests.support.gateway import Gateway, make_settings
from tests.support.redis_servers import EMBEDDED, RedisServer
from tests.support.redisdump import containing, dump
from tests.support.waiting import eventually


@pytest.fixture(params=["single", "cluster", "redis-6.2"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Also against the Redis the gateway embeds by default (6.2: no `entries-added` in XINFO)."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        yield make_settings(tmp_path, redis_url=cluster.url, redis_cluster=True)
    elif request.param == "redis-6.2":
        server = RedisServer(tmp_path / "redis", appendonly=False, binary=EMBEDDED)
        server.start()
        try:
            yield make_settings(tmp_path, redis_url=server.url)
        finally:
            server.stop()
    else:
        yield make_settings(tmp_path)


def ev(n: int) -> Item:
    return Item(Event("telegram.update", "telegram", {"update_id": n, "text": f"hello {n}"}), dedup=str(n))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def status(gateway: Gateway, user_id: str) -> dict[str, Any]:
    resp = await gateway.admin("GET", f"/admin/v1/users/{user_id}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def put_key(gateway: Gateway, dedicated: DedicatedServer, user_id: str, key: str) -> Any:
    return await gateway.admin(
        "PUT", f"/admin/v1/users/{user_id}", json={"server_url": dedicated.url(user_id), "server_public_key": key}
    )


async def test_hybrid_key_user_receives_events_that_open_only_with_the_hybrid_private_key(
    gateway: Gateway, dedicated: DedicatedServer
):
    private, raw = new_key("MLKEM768-X25519")
    assert len(raw) == 1216
    dedicated.keyrings["pq"] = {kid_of(raw): private}
    resp = await put_key(gateway, dedicated, "pq", b64(raw))
    assert resp.status == 201, await resp.text()
    dedicated.secrets["pq"] = [(await resp.json())["webhook_secret"]]
    sealing = (await status(gateway, "pq"))["sealing"]
    assert sealing == {"suite": "MLKEM768-X25519", "kid": kid_of(raw), "held_for_older_keys": 0, "older_keys": []}

    await gateway.services.handoff("pq", [ev(1), ev(2)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.events("pq")) == 2)
    assert [e["payload"]["update_id"] for e in dedicated.events("pq")] == [1, 2]
    delivered = dedicated.received[0].body["events"]
    assert {e["kid"] for e in delivered} == {kid_of(raw)}
    for event in delivered:
        sealed = unb64url(event["sealed"])
        plaintext = open_sealed(private, "pq", event["id"], event["sealed"])
        # enc is the ML-KEM-768 ciphertext (1088 bytes) then the ephemeral X25519 key (32 bytes).
        assert len(sealed) == 1120 + len(b'{"update_id":1,"text":"hello 1"}') + 16
        assert plaintext["text"].startswith("hello")
        # The X25519 half alone does not open it, nor does the same X25519 key with another ML-KEM
        # key: both halves of the hybrid are needed.
        assert isinstance(private, hpke.MLKEM768X25519PrivateKey)
        x25519_only, _ = new_key("X25519")
        with pytest.raises((InvalidTag, ValueError)):
            SUITES["X25519"].decrypt(sealed, x25519_only, info=info("pq", event["id"]))
        other, _ = new_key("MLKEM768-X25519")
        with pytest.raises(InvalidTag):
            open_sealed(other, "pq", event["id"], event["sealed"])


async def test_hybrid_key_that_shares_only_the_x25519_half_cannot_open(gateway: Gateway, dedicated: DedicatedServer):
    """The attack on a hybrid: an attacker who knows the X25519 private key (a classical break)
    still opens nothing without the ML-KEM-768 private key."""
    x25519 = X25519PrivateKey.generate()
    victim, attacker = MLKEM768PrivateKey.generate(), MLKEM768PrivateKey.generate()
    raw = victim.public_key().public_bytes_raw() + x25519.public_key().public_bytes_raw()
    dedicated.keyrings["victim"] = {kid_of(raw): hpke.MLKEM768X25519PrivateKey(victim, x25519)}
    resp = await put_key(gateway, dedicated, "victim", b64(raw))
    assert resp.status == 201
    dedicated.secrets["victim"] = [(await resp.json())["webhook_secret"]]
    await gateway.services.handoff("victim", [ev(7)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.events("victim")) == 1)
    event = dedicated.received[0].body["events"][0]
    assert dedicated.events("victim")[0]["payload"]["update_id"] == 7
    with pytest.raises(InvalidTag):
        open_sealed(hpke.MLKEM768X25519PrivateKey(attacker, x25519), "victim", event["id"], event["sealed"])


async def test_key_change_while_events_are_held_delivers_old_then_new_kid_in_order_and_loses_nothing(
    gateway: Gateway, dedicated: DedicatedServer
):
    services = gateway.services
    created = await gateway.create_user(dedicated, "rotor")
    [old_kid] = dedicated.keyrings["rotor"]
    dedicated.mode["rotor"] = "down"
    await services.handoff("rotor", [ev(n) for n in range(150)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.attempts) >= 1)  # a transaction is in flight

    resp = await put_key(gateway, dedicated, "rotor", dedicated.new_user("rotor", "MLKEM768-X25519"))
    assert resp.status == 200
    [new_kid] = set(dedicated.keyrings["rotor"]) - {old_kid}
    sealing = (await status(gateway, "rotor"))["sealing"]
    assert (sealing["suite"], sealing["kid"], sealing["held_for_older_keys"]) == ("MLKEM768-X25519", new_kid, 150)
    assert [(k["kid"], k["suite"], k["held"]) for k in sealing["older_keys"]] == [(old_kid, "X25519", 150)]
    await services.handoff("rotor", [ev(n) for n in range(150, 160)], dedup_scope="tg")

    # The server takes one transaction and goes down again: 50 events still need the old key.
    dedicated.mode["rotor"] = "once"
    ping = {"Authorization": f"Bearer {created['server_token']}"}
    assert (await gateway.client.post("/v1/ping", headers=ping)).status == 200
    await dedicated.wait_for(lambda: len(dedicated.events("rotor")) == 100)

    async def drained_to(n: int) -> bool:
        return bool((await status(gateway, "rotor"))["sealing"]["held_for_older_keys"] == n)

    await eventually(lambda: drained_to(50))
    assert (await status(gateway, "rotor"))["queue"]["pending"] == 60

    dedicated.mode["rotor"] = "ok"
    assert (await gateway.client.post("/v1/ping", headers=ping)).status == 200
    await dedicated.wait_for(lambda: len(dedicated.events("rotor")) == 160)
    events = dedicated.events("rotor")
    assert [e["payload"]["update_id"] for e in events] == list(range(160))
    assert [e["kid"] for e in events] == [old_kid] * 150 + [new_kid] * 10
    await eventually(lambda: drained_to(0))
    assert (await status(gateway, "rotor"))["sealing"]["older_keys"] == []

    # With nothing held, the old key is no longer needed: the server may drop it.
    del dedicated.keyrings["rotor"][old_kid]
    await services.handoff("rotor", [ev(160)], dedup_scope="tg")
    await dedicated.wait_for(lambda: len(dedicated.events("rotor")) == 161)
    assert dedicated.events("rotor")[-1]["kid"] == new_kid


async def test_key_change_racing_hand_overs_splits_the_queue_exactly_where_the_count_says(
    gateway: Gateway, dedicated: DedicatedServer
):
    services = gateway.services
    created = await gateway.create_user(dedicated, "racer")
    dedicated.mode["racer"] = "down"
    new_key_text = dedicated.new_user("racer", "MLKEM768-X25519")

    some_queued = asyncio.Event()
    queued = 0

    async def hand_over(first: int) -> None:
        # Eight of these run at once, each handing over one event at a time.
        nonlocal queued
        for n in range(first, first + 15):
            await services.handoff("racer", [ev(n)], dedup_scope="tg")
            queued += 1
            if queued >= 3:
                some_queued.set()

    async def change_key() -> None:
        await some_queued.wait()  # while most hand-overs are still to come
        assert (await put_key(gateway, dedicated, "racer", new_key_text)).status == 200

    await asyncio.gather(change_key(), *(hand_over(first) for first in range(0, 120, 15)))
    held_old = (await status(gateway, "racer"))["sealing"]["held_for_older_keys"]
    dedicated.mode["racer"] = "ok"
    ping = {"Authorization": f"Bearer {created['server_token']}"}
    assert (await gateway.client.post("/v1/ping", headers=ping)).status == 200
    await dedicated.wait_for(lambda: len(dedicated.events("racer")) == 120)
    kids = [e["kid"] for e in dedicated.events("racer")]
    assert 0 < held_old < 120, "the key changed while events were being handed over"
    new_kid = kid_of(unb64url(new_key_text))
    # Every event opened with the key its kid names (the stand-in opens by kid), the old ones all
    # come first, and the status counted exactly them.
    assert kids == sorted(kids, key=lambda k: k == new_kid)
    assert kids.count(new_kid) == 120 - held_old


async def test_going_back_to_an_earlier_key_counts_its_events_as_current(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "boomerang")
    first = (await status(gateway, "boomerang"))["server_public_key"]
    dedicated.mode["boomerang"] = "down"
    await gateway.services.handoff("boomerang", [ev(1), ev(2)], dedup_scope="tg")
    second = dedicated.new_user("boomerang")
    assert (await put_key(gateway, dedicated, "boomerang", second)).status == 200
    await gateway.services.handoff("boomerang", [ev(3)], dedup_scope="tg")
    assert (await status(gateway, "boomerang"))["sealing"]["held_for_older_keys"] == 2
    assert (await put_key(gateway, dedicated, "boomerang", first)).status == 200
    sealing = (await status(gateway, "boomerang"))["sealing"]
    # Events 1 and 2 open with the key in use again; only event 3 needs another key.
    assert sealing["kid"] == kid_of(unb64url(first))
    assert [(k["kid"], k["held"]) for k in sealing["older_keys"]] == [(kid_of(unb64url(second)), 1)]


def low_order_x25519() -> bytes:
    return bytes(32)  # the all-zero point: every shared secret with it is zero


def hybrid_with(mlkem: bytes, x25519: bytes) -> bytes:
    return mlkem + x25519


def bad_keys() -> list[tuple[str, object]]:
    good_mlkem = MLKEM768PrivateKey.generate().public_key().public_bytes_raw()
    good_x = X25519PrivateKey.generate().public_key().public_bytes_raw()
    return [
        ("31 bytes", b64(os.urandom(31))),
        ("33 bytes", b64(os.urandom(33))),
        ("1215 bytes", b64(os.urandom(1215))),
        ("1217 bytes", b64(os.urandom(1217))),
        ("1184 bytes: ML-KEM alone", b64(good_mlkem)),
        ("empty", ""),
        ("not base64url", "this is not a key!!"),
        ("standard base64 alphabet", base64.b64encode(b"\xfb" * 32).decode()),
        ("ML-KEM part refused by the library", b64(hybrid_with(b"\xff" * 1184, good_x))),
        ("low-order X25519 key", b64(low_order_x25519())),
        ("hybrid with a low-order X25519 half", b64(hybrid_with(good_mlkem, low_order_x25519()))),
        ("a number", 12345),
        ("null", None),
    ]


async def test_wrong_lengths_and_malformed_keys_are_400_and_nothing_is_stored_or_queued(
    gateway: Gateway, dedicated: DedicatedServer
):
    await gateway.create_user(dedicated, "keeper")
    before = (await status(gateway, "keeper"))["sealing"]
    dedicated.mode["keeper"] = "down"
    await gateway.services.handoff("keeper", [ev(1)], dedup_scope="tg")
    for name, key in bad_keys():
        for user_id in ("keeper", "newcomer"):
            resp = await gateway.admin(
                "PUT",
                f"/admin/v1/users/{user_id}",
                json={"server_url": dedicated.url(user_id), "server_public_key": key},
            )
            assert resp.status == 400, (name, await resp.text())
            body = await resp.json()
            assert body["error"] == "invalid_server_public_key", name
            assert "server_public_key" in body["detail"], name
        assert (await gateway.admin("GET", "/admin/v1/users/newcomer")).status == 404, name
        assert (await status(gateway, "keeper"))["sealing"] == before, name
    # The held event is still the only one, sealed to the key that was never replaced.
    assert await gateway.services.redis.xlen(gateway.services.keys.queue("keeper")) == 1
    assert not any(u == "newcomer" for u, _ in dedicated.attempts)
    # Positive control: a well-formed key of either kind is taken.
    suites: tuple[SuiteName, ...] = ("X25519", "MLKEM768-X25519")
    for suite in suites:
        assert (await put_key(gateway, dedicated, "keeper", b64(new_key(suite)[1]))).status == 200


async def test_detail_of_a_wrong_length_names_both_accepted_lengths(gateway: Gateway):
    body = {"server_url": "https://srv.example", "server_public_key": b64(bytes(64))}
    resp = await gateway.admin("PUT", "/admin/v1/users/lengthy", json=body)
    assert resp.status == 400
    detail = (await resp.json())["detail"]
    assert "32" in detail and "1216" in detail and "64" in detail


async def test_export_names_the_keys_in_use_and_erasure_leaves_no_key_metadata(
    gateway: Gateway, dedicated: DedicatedServer
):
    services = gateway.services
    await gateway.create_user(dedicated, "leaver")
    old_key = (await status(gateway, "leaver"))["server_public_key"]
    dedicated.mode["leaver"] = "down"
    await services.handoff("leaver", [ev(1), ev(2)], dedup_scope="tg")
    new_key_text = dedicated.new_user("leaver", "MLKEM768-X25519")
    assert (await put_key(gateway, dedicated, "leaver", new_key_text)).status == 200
    old_kid, new_kid = kid_of(unb64url(old_key)), kid_of(unb64url(new_key_text))

    resp = await gateway.admin("GET", "/admin/v1/users/leaver/export")
    assert resp.status == 200
    document = await resp.json()
    validate(document)
    assert document["server"]["public_key"] == new_key_text
    sealing = document["sealing"]
    assert (sealing["suite"], sealing["kid"], sealing["held_for_older_keys"]) == ("MLKEM768-X25519", new_kid, 2)
    assert [(k["kid"], k["suite"], k["held"]) for k in sealing["older_keys"]] == [(old_kid, "X25519", 2)]

    # Positive control: the metadata is in Redis before the erasure, so its absence after means something.
    before = await dump(services.redis, gateway.settings.key_prefix)
    assert containing(before, old_kid.encode()) and containing(before, new_key_text.encode())
    assert (await gateway.admin("DELETE", "/admin/v1/users/leaver")).status == 202

    async def gone() -> bool:
        return bool((await gateway.admin("GET", "/admin/v1/users/leaver")).status == 404)

    await eventually(gone, timeout=20)
    after = await dump(services.redis, gateway.settings.key_prefix)
    for needle in (old_kid, new_kid, old_key, new_key_text, "key_history"):
        assert containing(after, needle.encode()) == [], needle
