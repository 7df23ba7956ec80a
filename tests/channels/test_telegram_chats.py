"""Which chats a user has and which one is the default, in the layout of today and of before.

Older versions kept the default private chat in its own key `{u:<id>}:tg:private`; it now is
the field `private` of `{u:<id>}:tg:chats`. Users stored the old way must keep working.
"""

from __future__ import annotations

from redis.asyncio import Redis

from channels.telegram.chats import Chats
from foundation.redis_keys import Keys
from tests.support import telegram as tgs
from tests.support.dedicated import DedicatedServer
from tests.support.telegram_gateway import TgGateway

ALICE = tgs.person(111000111, "Alice", "alice")
ALICE_2 = tgs.person(111000112, "Alice", "alice_phone")
GROUP = -4001230000


async def to_old_layout(redis: Redis, keys: Keys, user_id: str) -> None:
    """Store the user's default chat as older versions did: in its own key."""
    chats = keys.user_key(user_id, "tg:chats")
    default = await redis.hget(chats, "private")
    assert default is not None
    await redis.hdel(chats, "private")
    await redis.set(keys.user_key(user_id, "tg:private"), default)


async def user_keys(redis: Redis, keys: Keys, user_id: str) -> set[str]:
    tag = keys.user_tag(user_id)
    return {k.decode().removeprefix(tag + ":") async for k in redis.scan_iter(match=keys.user_pattern(user_id))}


async def test_the_default_chat_lives_in_the_chats_hash_and_is_never_listed_as_a_chat(redis: Redis, keys: Keys):
    chats = Chats(redis, keys)
    await chats.link("u1", ALICE["id"], "private", "start")
    await chats.link("u1", GROUP, "group", "group")
    assert await user_keys(redis, keys, "u1") == {"tg:chats"}
    assert await chats.private_chat("u1") == ALICE["id"]
    assert sorted(await chats.of_user("u1")) == [GROUP, ALICE["id"]]
    # A group never becomes the default; a second private chat does, and unlinking it hands
    # the default back to the first.
    await chats.link("u1", ALICE_2["id"], "private", "start")
    assert await chats.private_chat("u1") == ALICE_2["id"]
    await chats.unlink("u1", ALICE_2["id"])
    assert await chats.private_chat("u1") == ALICE["id"]
    await chats.unlink("u1", ALICE["id"])
    assert await chats.private_chat("u1") is None
    assert list(await chats.of_user("u1")) == [GROUP]
    await chats.unlink("u1", GROUP)
    assert await user_keys(redis, keys, "u1") == set()


async def test_a_default_chat_stored_the_old_way_is_read_and_moved_into_the_hash(redis: Redis, keys: Keys):
    chats = Chats(redis, keys)
    await chats.link("u1", ALICE["id"], "private", "start")
    await chats.link("u1", GROUP, "group", "group")
    await to_old_layout(redis, keys, "u1")
    assert await user_keys(redis, keys, "u1") == {"tg:chats", "tg:private"}
    assert sorted(await chats.of_user("u1")) == [GROUP, ALICE["id"]]
    assert await chats.private_chat("u1") == ALICE["id"]
    assert await user_keys(redis, keys, "u1") == {"tg:chats"}
    assert await redis.hget(keys.user_key("u1", "tg:chats"), "private") == str(ALICE["id"]).encode()


async def test_unlinking_or_moving_a_default_chat_stored_the_old_way(redis: Redis, keys: Keys):
    chats = Chats(redis, keys)
    await chats.link("u1", ALICE["id"], "private", "start")
    await chats.link("u1", ALICE_2["id"], "private", "start")
    await to_old_layout(redis, keys, "u1")
    # The old default is unlinked: the other private chat becomes the default.
    await chats.unlink("u1", ALICE_2["id"])
    assert await chats.private_chat("u1") == ALICE["id"]
    assert await user_keys(redis, keys, "u1") == {"tg:chats"}
    # The old default is taken over by another user's link: u1 is left without one.
    await to_old_layout(redis, keys, "u1")
    assert await chats.link("u2", ALICE["id"], "private", "start") == "u1"
    assert await chats.private_chat("u1") is None and await chats.of_user("u1") == {}
    assert await user_keys(redis, keys, "u1") == set()
    assert await chats.private_chat("u2") == ALICE["id"]


async def test_relinking_a_private_chat_replaces_a_default_stored_the_old_way(redis: Redis, keys: Keys):
    chats = Chats(redis, keys)
    await chats.link("u1", ALICE["id"], "private", "start")
    await to_old_layout(redis, keys, "u1")
    await chats.link("u1", ALICE_2["id"], "private", "start")
    assert await user_keys(redis, keys, "u1") == {"tg:chats"}
    assert await chats.private_chat("u1") == ALICE_2["id"]


async def test_erasure_and_purge_take_the_old_key_too(redis: Redis, keys: Keys):
    chats = Chats(redis, keys)
    await chats.link("u1", ALICE["id"], "private", "start")
    await to_old_layout(redis, keys, "u1")
    await chats.forget_user("u1")
    assert await chats.owner(ALICE["id"]) is None
    await chats.purge("u1")
    assert await user_keys(redis, keys, "u1") == set()


async def test_a_user_stored_the_old_way_exports_and_sends_as_before(tg: TgGateway, dedicated: DedicatedServer):
    created = await tg.create_user(dedicated, "u1")
    await tg.link_private(dedicated, "u1", ALICE)
    keys = Keys(tg.settings.key_prefix)
    await to_old_layout(tg.services.redis, keys, "u1")
    export = await (await tg.admin("GET", "/admin/v1/users/u1/export")).json()
    assert export["telegram"]["private_chat_id"] == ALICE["id"]
    assert [c["chat_id"] for c in export["telegram"]["chats"]] == [ALICE["id"]]
    await to_old_layout(tg.services.redis, keys, "u1")
    auth = tg.server_headers(created["server_token"])
    resp = await tg.client.post("/v1/telegram/sendMessage", json={"text": "still here"}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert tg.fake.sent()[-1].params["chat_id"] == str(ALICE["id"])
