"""Every method of the table × every field that names a chat, a message source, a file or a
callback query × another user's id (spelled every way a reader might accept it) → refused with
a JSON 4xx, and nothing reaches the Bot API. The control: the same calls with the caller's own
ids pass the same check, so what is refused is the foreign id and nothing else."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.telegram.methods import METHODS, Kind, Method
from channels.telegram.policy import check
from foundation.errors import ApiError
from tests.hostile.checks import assert_error_json, assert_sane, read
from tests.hostile.world import Tenant, World

pytestmark = pytest.mark.asyncio(loop_scope="package")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NAMING = (
    Kind.CHAT,
    Kind.SOURCE_CHAT,
    Kind.FILE,
    Kind.FILE_ID,
    Kind.CALLBACK,
    Kind.REPLY,
    Kind.MEDIA,
    Kind.MEDIA_LIST,
)
TARGETS = [(m, name) for m in METHODS for name, kind in m.params.items() if kind in NAMING]


def baseline(method: Method, me: Tenant) -> dict[str, Any]:
    """A well-formed call of `method` that names only the caller's own chats and files."""
    values: dict[str, Any] = {
        "text": "hello",
        "caption": "a caption",
        "message_id": 5,
        "draft_id": 9,
        "action": "typing",
        "reaction": [{"type": "emoji", "emoji": "👍"}],
        "latitude": 52.5,
        "longitude": 13.4,
        "title": "Office",
        "address": "Main St 1",
        "phone_number": "+4930123456",
        "first_name": "Carol",
        "question": "Tea?",
        "options": ["Yes", "No"],
        "callback_query_id": me.callback_query_id,
        "file_id": me.file_id,
        "from_chat_id": me.group_chat,
        "chat_id": me.private_chat,
        "media": {"type": "photo", "media": me.file_id},
    }
    params = {k: v for k, v in values.items() if k in method.params}
    for name in method.of_kind(Kind.FILE)[:1]:
        params[name] = me.file_id
    if method.params.get("media") is Kind.MEDIA_LIST:
        params["media"] = [{"type": "photo", "media": me.file_id}] * 2
    return params


def foreign(kind: Kind, name: str, me: Tenant, other: Tenant) -> st.SearchStrategy[Any]:
    """Another user's id for a field of `kind`, in the spellings a lenient reader would accept."""
    chats = [other.private_chat, other.group_chat]
    chat_spellings = st.sampled_from(chats).flatmap(
        lambda c: st.sampled_from([c, str(c), f" {c}", f"{c}\n", f"+{c}" if c > 0 else f"-0{-c}", float(c)])
    )
    files = st.sampled_from([other.file_id, f" {other.file_id}", f"{other.file_id}\t"])
    if kind in (Kind.CHAT, Kind.SOURCE_CHAT):
        return st.one_of(chat_spellings, st.just("@someone_else"))
    if kind in (Kind.FILE, Kind.FILE_ID):
        return files
    if kind is Kind.CALLBACK:
        return st.sampled_from([other.callback_query_id, f" {other.callback_query_id}"])
    if kind is Kind.REPLY:
        theirs = st.sampled_from(chats)
        texts = st.one_of(
            theirs.map(lambda c: {"message_id": 1, "chat_id": c}),
            st.tuples(st.sampled_from([" ", "\n", "\t ", ""]), theirs).map(
                lambda t: t[0] + json.dumps({"chat_id": t[1], "message_id": 1}) + t[0]
            ),
            theirs.map(lambda c: f'{{"chat_id": {c}, "chat_id": {me.private_chat}, "message_id": 1}}'),
            theirs.map(lambda c: f'{{"chat_id": {me.private_chat}, "message_id": 1, "chat_id": {c}}}'),
            theirs.map(lambda c: f'{{"message_id": 1, "chat_id": "{c}"}}'),
        )
        return texts
    item = files.map(lambda f: {"type": "photo", "media": f})
    thumb = files.map(lambda f: {"type": "video", "media": me.file_id, "thumbnail": f})
    dup = files.map(lambda f: f'{{"type": "photo", "media": "{f.strip()}", "media": "{me.file_id}"}}')
    if kind is Kind.MEDIA:
        return st.one_of(item, thumb, dup)
    own = {"type": "photo", "media": me.file_id}
    return st.one_of(
        st.one_of(item, thumb).map(lambda i: [own, i]),
        dup.map(lambda d: f"[{json.dumps(own)}, {d}]"),
    )


def encode(params: dict[str, Any], how: str) -> tuple[Any, dict[str, str]]:
    if how == "json":
        return orjson.dumps(params), {"Content-Type": "application/json"}
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    if how == "form":
        return fields, {}
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    return form, {}


@FUZZ
@given(data=st.data())
async def test_another_users_id_in_any_naming_field_is_refused_and_never_sent(world: World, data: st.DataObject):
    method, name = data.draw(st.sampled_from(TARGETS), label="method, field")
    me, other = world.alice, world.bob
    params = baseline(method, me)
    params[name] = data.draw(foreign(method.params[name], name, me, other), label="foreign value")
    how = data.draw(st.sampled_from(["json", "form", "multipart"]), label="encoding")
    body, headers = encode(params, how)
    before = await world.effects()
    resp = await world.client.post(f"/v1/telegram/{method.name}", data=body, headers={**me.auth, **headers})
    answer = await read(resp)
    assert_sane(answer, world.secrets)
    assert answer.status in (400, 403, 404), (method.name, name, params, answer.status, answer.body)
    assert_error_json(answer)
    assert await world.effects() == before, "a refused call reached the Bot API or queued something"


@pytest.mark.parametrize(("method", "name"), TARGETS, ids=[f"{m.name}.{n}" for m, n in TARGETS])
async def test_control_the_same_calls_with_own_ids_pass_the_check(world: World, method: Method, name: str):
    chats = world.tg.channel.chats
    checked = await check(chats, world.alice.user_id, method, baseline(method, world.alice), [])
    if method.has_chat:
        assert checked.chat is not None and checked.chat.chat_id == world.alice.private_chat
    # And the check is what refuses a foreign id: the same call naming Bob's is refused.
    theirs = baseline(method, world.alice)
    kind = method.params[name]
    theirs[name] = {
        Kind.CHAT: world.bob.private_chat,
        Kind.SOURCE_CHAT: world.bob.group_chat,
        Kind.FILE: world.bob.file_id,
        Kind.FILE_ID: world.bob.file_id,
        Kind.CALLBACK: world.bob.callback_query_id,
        Kind.REPLY: {"message_id": 1, "chat_id": world.bob.private_chat},
        Kind.MEDIA: {"type": "photo", "media": world.bob.file_id},
        Kind.MEDIA_LIST: [{"type": "photo", "media": world.bob.file_id}] * 2,
    }[kind]
    with pytest.raises(ApiError) as refused:
        await check(chats, world.alice.user_id, method, theirs, [])
    assert refused.value.status in (403, 404)
