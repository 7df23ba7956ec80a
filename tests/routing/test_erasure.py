from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from foundation.config import Settings
from foundation.errors import KeyShredded, NotFound
from foundation.types import Event
from foundation.vault import aad
from routing.handoff import Item
from routing.hooks import Hooks
from routing.plugin import Plugin
from tests.support.dedicated import DedicatedServer
from tests.support.erasure import unique, wait_gone
from tests.support.gateway import Gateway, make_settings, serve
from tests.support.redisdump import containing, dump
from tests.support.waiting import eventually


def ev(n: int) -> Item:
    return Item(Event("telegram.update", "telegram", {"update_id": n, "message": {"text": f"note {n}"}}), dedup=str(n))


async def test_erasure_removes_every_trace_and_shreds_the_data_key(settings: Settings, dedicated: DedicatedServer):
    # A provider that is down, and one that takes its time.
    release = asyncio.Event()
    calls: list[str] = []

    async def provider_down(user_id: str) -> None:
        calls.append(f"down:{user_id}")
        raise ConnectionError("revocation endpoint unreachable")

    async def slow_provider(user_id: str) -> None:
        calls.append(f"slow:{user_id}")
        await release.wait()

    providers = Plugin(name="test-providers", hooks=Hooks(erase={"down": provider_down, "slow": slow_provider}))
    async with serve(settings, extra=[providers]) as gateway:
        services = gateway.services
        erased, kept = unique("erase-me"), unique("keep")
        await gateway.create_user(dedicated, erased)
        await gateway.create_user(dedicated, kept)
        dedicated.mode[erased] = "down"
        await services.handoff(erased, [ev(1), ev(2)], dedup_scope="tg")
        await dedicated.wait_for(lambda: any(u == erased for u, _ in dedicated.attempts))
        # A channel's own per-user state lives under the user's hash tag too.
        await services.redis.hset(services.keys.user_key(erased, "tg:chats"), "4711", b"private")

        # Copied aside before the delete: a ciphertext of the user and the wrapped data key.
        ciphertext = await services.redis.hget(services.keys.user(erased), "secret")
        wrapped = await services.redis.hget(services.keys.user(erased), "dek")
        assert ciphertext is not None and wrapped is not None

        resp = await gateway.admin("DELETE", f"/admin/v1/users/{erased}")
        assert resp.status == 202
        assert (await resp.json())["status"] == "erasing"

        async def progress() -> dict[str, Any]:
            r = await gateway.admin("GET", f"/admin/v1/users/{erased}")
            assert r.status == 200
            body: dict[str, Any] = await r.json()
            return body

        async def down_recorded() -> bool:
            return bool((await progress())["erasure"]["hooks"].get("down") == "failed")

        await eventually(down_recorded)
        shown = await progress()
        assert shown["status"] == "erasing"
        assert shown["erasure"]["step"] == "hooks"
        assert (await gateway.admin("GET", f"/admin/v1/users/{erased}/export")).status == 404
        # Repeating the delete is harmless; re-creating the user waits for the erasure to end.
        assert (await gateway.admin("DELETE", f"/admin/v1/users/{erased}")).status == 202
        again = await gateway.admin(
            "PUT",
            f"/admin/v1/users/{erased}",
            json={"server_url": dedicated.url(erased), "server_public_key": "x" * 43},
        )
        assert again.status in (400, 409)
        # Nothing new is queued for a user being erased.
        with pytest.raises(NotFound):
            await services.handoff(erased, [ev(3)], dedup_scope="tg")

        release.set()
        await wait_gone(gateway, erased)
        assert calls == [f"down:{erased}", f"slow:{erased}"]

        snapshot = await dump(services.redis, gateway.settings.key_prefix)
        assert containing(snapshot, erased.encode()) == []
        assert containing(snapshot, f"{{u:{erased}}}".encode()) == []
        assert erased.encode() not in await services.redis.smembers(services.keys.users)
        assert await services.redis.zscore(services.keys.due, erased) is None

        # Crypto-shredding: the vault cannot open the old ciphertext any more ...
        with pytest.raises(KeyShredded):
            await services.vault.decrypt(erased, ("webhook_secret",), ciphertext)
        # ... nor can any remaining data key or master key, used directly.
        ring = {k.kid: AESGCM(k.key) for k in gateway.settings.master_keys}
        candidates: list[AESGCM] = list(ring.values())
        for key, parts in snapshot.items():
            if key.endswith(b":user") and b"dek" in parts[::2]:
                owner = key.decode().split("{u:")[1].split("}")[0]
                kid, _, blob = dict(zip(parts[::2], parts[1::2], strict=True))[b"dek"].partition(b".")
                candidates.append(AESGCM(ring[kid.decode()].decrypt(blob[:12], blob[12:], aad(owner, "dek"))))
        assert len(candidates) > len(ring)  # the kept user's data key is among them
        for candidate in candidates:
            with pytest.raises(InvalidTag):
                candidate.decrypt(ciphertext[:12], ciphertext[12:], aad(erased, "webhook_secret"))
        # The copied data key itself would still open it: the test above is not vacuous.
        kid, _, blob = wrapped.partition(b".")
        dek = AESGCM(ring[kid.decode()].decrypt(blob[:12], blob[12:], aad(erased, "dek")))
        assert dek.decrypt(ciphertext[:12], ciphertext[12:], aad(erased, "webhook_secret")).startswith(b"whsec_")

        # The other user is untouched and still served.
        await services.handoff(kept, [ev(9)], dedup_scope="tg")
        await dedicated.wait_for(lambda: len(dedicated.events(kept)) == 1)
        assert (await gateway.admin("GET", f"/admin/v1/users/{kept}")).status == 200


async def test_deleting_an_unknown_user_is_accepted_and_leaves_nothing(gateway: Gateway):
    resp = await gateway.admin("DELETE", "/admin/v1/users/never-was")
    assert resp.status == 202
    await wait_gone(gateway, "never-was")
    assert containing(await dump(gateway.services.redis, gateway.settings.key_prefix), b"never-was") == []
    assert (await gateway.admin("DELETE", "/admin/v1/users/bad%20id")).status == 400
    assert (await gateway.client.delete("/admin/v1/users/never-was")).status == 401


@pytest.fixture
async def quick_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway that gives up on a hanging server after 1 s (so erasure waits for that, not 10 s)."""
    settings = dataclasses.replace(make_settings(tmp_path), delivery_timeout=1.0, delivery_lease=2.0)
    async with serve(settings) as gateway:
        yield gateway


async def test_erasure_waits_out_a_delivery_in_flight_and_nothing_comes_back(
    quick_gateway: Gateway, dedicated: DedicatedServer
):
    gateway = quick_gateway
    user = unique("hangs")
    await gateway.create_user(dedicated, user)
    dedicated.mode[user] = "hang"
    await gateway.services.handoff(user, [ev(1)], dedup_scope="tg")
    await eventually(lambda: any(u == user for u, _ in dedicated.attempts))  # a hanging server does not signal
    assert (await gateway.admin("DELETE", f"/admin/v1/users/{user}")).status == 202
    steps = set()
    while True:
        resp = await gateway.admin("GET", f"/admin/v1/users/{user}")
        if resp.status == 404:
            break
        steps.add((await resp.json())["erasure"]["step"])
        await asyncio.sleep(0.05)
    assert "delivery" in steps
    # The failed attempt ended after the keys were gone: give it time to write anything back.
    await asyncio.sleep(1.5)
    assert containing(await dump(gateway.services.redis, gateway.settings.key_prefix), user.encode()) == []


async def test_vault_refuses_to_create_key_material_for_a_user_being_erased(
    gateway: Gateway, dedicated: DedicatedServer
):
    user = unique("late")
    await gateway.create_user(dedicated, user)
    services = gateway.services
    await services.redis.hset(services.keys.user(user), "erasing", b"1")
    await services.redis.hdel(services.keys.user(user), "dek")
    with pytest.raises(KeyShredded):
        await services.vault.encrypt(user, ("late", "write"), b"token")
    assert await services.redis.hget(services.keys.user(user), "dek") is None
