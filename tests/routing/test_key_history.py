"""Script and field replies are read by name: the key-state script's answer and the token
fields authentication reads, each checked for its shape before anything is taken from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from foundation.errors import StorageError
from foundation.redis_keys import Keys
from foundation.vault import Vault
from routing.key_history import KEY_STATE, KeyState
from routing.registry import TOKEN_FIELDS, Registry, StoredTokens
from tests.support.gateway import make_settings, random_public_key


async def test_the_key_state_of_a_user_is_read_by_name(redis: Redis, keys: Keys, tmp_path: Path):
    registry = Registry(redis, keys, Vault(redis, keys, make_settings(tmp_path).master_keys))
    first, second = random_public_key(), random_public_key()
    await registry.put("kim", "https://srv.example", first)
    await redis.xadd(keys.queue("kim"), {"e": b"sealed to the first key"})
    await registry.put("kim", "https://srv.example", second)

    reply = await redis.register_script(KEY_STATE)(keys=[keys.user("kim"), keys.queue("kim"), keys.counters("kim")])
    state = KeyState.parse(reply)

    assert state.current == second
    assert (state.length, state.first_id != "") == (1, True)
    assert [run["until_id"] for run in state.history] == [state.first_id]
    assert state.held() == [1], "the one queued event needs the first key"
    assert (await registry.key_status("kim")).held_for_older_keys == 1


async def test_the_key_state_of_an_unknown_user_is_empty(redis: Redis, keys: Keys):
    reply = await redis.register_script(KEY_STATE)(
        keys=[keys.user("nobody"), keys.queue("nobody"), keys.counters("nobody")]
    )
    assert KeyState.parse(reply) == KeyState("", [], 0, 0, "")


@pytest.mark.parametrize(
    "reply",
    [
        None,
        [b"key", b"[]", 0, 0],
        [b"key", b"[]", 0, 0, b"", b"extra"],
        [b"key", b"[]", b"0", 0, b""],
        [b"key", b"{}", 0, 0, b""],
        [None, b"[]", 0, 0, b""],
    ],
)
def test_a_key_state_reply_of_another_shape_is_refused(reply: object):
    with pytest.raises(StorageError):
        KeyState.parse(reply)


def test_the_token_fields_are_read_by_name():
    stored = StoredTokens.parse([b"new-hash", b"old-hash", b"1700000000.5", None])
    assert stored == StoredTokens("new-hash", "old-hash", 1700000000.5, erasing=False)
    assert StoredTokens.parse([None, None, None, b"1"]) == StoredTokens("", "", 0.0, erasing=True)
    with pytest.raises(StorageError):
        StoredTokens.parse([b"new-hash", b"old-hash", b"0"])
    assert len(TOKEN_FIELDS) == len(StoredTokens._fields)
