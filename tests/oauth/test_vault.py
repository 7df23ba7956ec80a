from __future__ import annotations

import asyncio
import base64
import os
import sys
import time

import pytest
from redis.asyncio import Redis

from foundation.config import MasterKey
from foundation.errors import KeyShredded, VaultError
from foundation.redis_keys import Keys
from foundation.storage import connect
from foundation.vault import Vault
from oauth.store import ConnectionStore, Tokens
from tests.support.gateway import ADMIN_TOKEN, REDIS_URL, wipe
from tests.support.redis_servers import RedisCluster


async def register(redis: Redis, keys: Keys, *users: str) -> None:
    """The vault gives data keys only to registered users (not to erased ones)."""
    for user in users:
        await redis.hset(keys.user(user), mapping={"server_url": "https://srv.example"})
        await redis.sadd(keys.users, user)


async def to_old_layout(redis: Redis, keys: Keys, user: str) -> None:
    """Store the user's data key as older versions did: in a key of its own, not in the record."""
    wrapped = await redis.hget(keys.user(user), "dek")
    assert wrapped is not None
    await redis.hdel(keys.user(user), "dek")
    await redis.set(keys.dek(user), wrapped)


def key(kid: str) -> MasterKey:
    return MasterKey(kid, os.urandom(32))


def tokens(n: int) -> Tokens:
    return Tokens(access_token=f"ya29.access-{n}", expires_at=time.time() + 3600, refresh_token=f"1//refresh-{n}")


async def test_a_ciphertext_moved_to_another_user_or_connection_does_not_open(redis: Redis, keys: Keys):
    await register(redis, keys, "alice", "bob")
    store = ConnectionStore(redis, keys, Vault(redis, keys, [key("k1")]))
    await store.put("alice", "google", "alice@example.test", tokens(1), connected_at=time.time())
    await store.put("bob", "google", "bob@example.test", tokens(2), connected_at=time.time())
    await store.put("alice", "microsoft", "alice@example.test", tokens(3), connected_at=time.time())
    alice_google = await redis.hget(store.key("alice", "google"), "tokens")
    # Bob's record with Alice's tokens, and Alice's Microsoft record with her Google tokens.
    await redis.hset(store.key("bob", "google"), "tokens", alice_google)
    await redis.hset(store.key("alice", "microsoft"), "tokens", alice_google)
    for user, provider in (("bob", "google"), ("alice", "microsoft")):
        with pytest.raises(VaultError):
            await store.load(user, provider)
    found = await store.load("alice", "google")
    assert found is not None
    assert found[1].refresh_token == "1//refresh-1"


async def test_shredding_the_data_key_makes_every_ciphertext_unreadable_for_good(redis: Redis, keys: Keys):
    await register(redis, keys, "carol")
    vault = Vault(redis, keys, [key("k1")])
    store = ConnectionStore(redis, keys, vault)
    await store.put("carol", "google", "carol@example.test", tokens(1), connected_at=time.time())
    sealed = await redis.hget(store.key("carol", "google"), "tokens")
    await vault.shred("carol")
    with pytest.raises(KeyShredded):
        await vault.decrypt("carol", ("google", "carol@example.test"), sealed)
    # A new data key for the same user id (a new user of that name) opens nothing old.
    await vault.encrypt("carol", ("x",), b"new life")
    with pytest.raises(VaultError):
        await vault.decrypt("carol", ("google", "carol@example.test"), sealed)


async def test_a_key_opened_in_this_process_is_not_used_after_another_process_shreds_it(redis: Redis, keys: Keys):
    await register(redis, keys, "dana")
    ring = [key("k1")]
    reader = ConnectionStore(redis, keys, Vault(redis, keys, ring))
    await reader.put("dana", "google", "dana@example.test", tokens(1), connected_at=time.time())
    sealed = await redis.hget(reader.key("dana", "google"), "tokens")
    assert (await reader.load("dana", "google")) is not None  # the opened key is cached now
    # Erasure deletes the key in another process; this one still has it opened in memory.
    await Vault(redis, keys, ring).shred("dana")
    with pytest.raises(KeyShredded):
        await reader.load("dana", "google")
    with pytest.raises(KeyShredded):
        await reader.all("dana")
    # The user id comes back with a new key: what the old key sealed stays unreadable.
    writer = Vault(redis, keys, ring)
    await writer.encrypt("dana", ("x",), b"new life")
    with pytest.raises(VaultError):
        await reader.load("dana", "google")
    with pytest.raises(VaultError):
        await Vault(redis, keys, ring).decrypt("dana", ("google", "dana@example.test"), sealed or b"")


async def test_a_data_key_copied_to_another_user_does_not_open_for_them(redis: Redis, keys: Keys):
    await register(redis, keys, "erin", "finn")
    vault = Vault(redis, keys, [key("k1")])
    sealed = await vault.encrypt("erin", ("note",), b"erin's")
    assert await vault.decrypt("erin", ("note",), sealed) == b"erin's"
    # Finn's slot holds Erin's wrapped key, which this process has opened before: it is bound to
    # Erin's id and must not open for Finn, neither from Redis nor from what is kept in memory.
    await redis.hset(keys.user("finn"), "dek", await redis.hget(keys.user("erin"), "dek") or b"")
    with pytest.raises(VaultError):
        await vault.decrypt("finn", ("note",), sealed)
    with pytest.raises(VaultError):
        await vault.encrypt("finn", ("note",), b"finn's")


async def test_a_data_key_stored_the_old_way_opens_and_moves_into_the_user_record(redis: Redis, keys: Keys):
    await register(redis, keys, "gus", "hana")
    ring = [key("k1")]
    store = ConnectionStore(redis, keys, Vault(redis, keys, ring))
    for user in ("gus", "hana"):
        await store.put(user, "google", f"{user}@example.test", tokens(1), connected_at=time.time())
        await to_old_layout(redis, keys, user)
    # A process that never saw these keys reads Gus's connection, then writes for Hana: both use
    # the key they had, which now lives in their records.
    fresh = ConnectionStore(redis, keys, Vault(redis, keys, ring))
    found = await fresh.load("gus", "google")
    assert found is not None and found[1].refresh_token == "1//refresh-1"
    await fresh.put("hana", "microsoft", "hana@example.test", tokens(2), connected_at=time.time())
    for user, providers in (("gus", ["google"]), ("hana", ["google", "microsoft"])):
        assert await redis.exists(keys.dek(user)) == 0
        assert await redis.hget(keys.user(user), "dek") is not None
        assert [c.provider for c in await fresh.all(user)] == providers
    # Shredding takes a key in either layout.
    await to_old_layout(redis, keys, "gus")
    await Vault(redis, keys, ring).shred("gus")
    with pytest.raises(KeyShredded):
        await fresh.load("gus", "google")


async def test_connections_and_their_data_key_are_read_together_on_a_redis_cluster_too(
    redis_cluster: RedisCluster, keys: Keys
):
    cluster = connect(redis_cluster.url, cluster=True)
    try:
        for user in ("ida", "jon"):
            await cluster.hset(keys.user(user), mapping={"server_url": "https://srv.example"})
        store = ConnectionStore(cluster, keys, Vault(cluster, keys, [key("k1")]))
        for n, user in enumerate(("ida", "jon")):
            await store.put(user, "google", f"{user}@example.test", tokens(n), connected_at=time.time())
        await to_old_layout(cluster, keys, "jon")
        for n, user in enumerate(("ida", "jon")):
            found = await store.load(user, "google")
            assert found is not None and found[1].refresh_token == f"1//refresh-{n}"
            assert [c.account for c in await store.all(user)] == [f"{user}@example.test"]
    finally:
        await cluster.aclose()
        await wipe(keys.prefix, redis_cluster.url, cluster=True)


async def test_records_sealed_under_the_master_key_are_bound_to_their_context(redis: Redis, keys: Keys):
    vault = Vault(redis, keys, [key("k1")])
    sealed = vault.seal_global(("revocation", "abc"), b"1//refresh")
    assert vault.open_global(("revocation", "abc"), sealed) == b"1//refresh"
    with pytest.raises(VaultError):
        vault.open_global(("revocation", "abd"), sealed)
    with pytest.raises(VaultError):
        Vault(redis, keys, [key("k2")]).open_global(("revocation", "abc"), sealed)


def _ring(*ring: MasterKey) -> str:
    return ",".join(f"{k.kid}:{base64.urlsafe_b64encode(k.key).rstrip(b'=').decode()}" for k in ring)


@pytest.mark.slow
async def test_keys_rotate_rewraps_every_data_key_while_every_token_stays_readable(redis: Redis, keys: Keys):
    k1, k2 = key("k1"), key("k2")
    old = ConnectionStore(redis, keys, Vault(redis, keys, [k1]))
    users = [f"u{n}" for n in range(150)]
    await register(redis, keys, *users)
    for n, user in enumerate(users):
        await old.put(user, "google", f"{user}@example.test", tokens(n), connected_at=time.time())
    for user in users[::2]:
        await to_old_layout(redis, keys, user)

    # The fleet already runs with k2 active and k1 still known (docs/oauth.md, rotation step 2).
    reader_vault = Vault(redis, keys, [k2, k1])
    reader = ConnectionStore(redis, keys, reader_vault)
    env = {
        **os.environ,
        "ALLY_REDIS_URL": REDIS_URL,
        "ALLY_KEY_PREFIX": keys.prefix,
        "ALLY_ADMIN_TOKEN": ADMIN_TOKEN,
        "ALLY_MASTER_KEYS": _ring(k2, k1),
    }
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "keys", "rotate",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    reads = 0
    while cli.returncode is None:
        reader_vault._cache.clear()  # unwrap from Redis each round, as a fresh process would
        for n, user in enumerate(users):
            found = await reader.load(user, "google")
            assert found is not None
            assert found[1].refresh_token == f"1//refresh-{n}"
            reads += 1
        await asyncio.sleep(0)
        if cli.stdout is not None and cli.stdout.at_eof():
            await cli.wait()
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    assert reads >= len(users)
    assert "re-wrapped 150 data key(s) under k2" in out.decode()

    status = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "keys", "status", env=env, stdout=asyncio.subprocess.PIPE
    )
    report = (await status.communicate())[0].decode()
    assert "k2: 150 data key(s)" in report
    assert "k1:" not in report
    assert [k async for k in redis.scan_iter(match=keys.dek("*"))] == []  # every key is in its record
    # k1 can now leave the ring: everything opens under k2 alone.
    only_new = ConnectionStore(redis, keys, Vault(redis, keys, [k2]))
    for n, user in enumerate(users):
        found = await only_new.load(user, "google")
        assert found is not None
        assert found[1].access_token == f"ya29.access-{n}"
