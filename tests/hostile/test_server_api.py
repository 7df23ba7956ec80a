"""The server API (`/v1`) under hostile input from an authenticated server: garbage bodies,
parameters, content types, paths and query strings. Never a 5xx or an internal detail, a JSON
error for the gateway's own refusals, nothing queued, and no Bot API call or model call
outside what the caller's own chats and a well-formed request allow."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from channels.telegram.methods import METHODS, Kind
from tests.hostile import strategies as hs
from tests.hostile.checks import Answer, assert_error_json, assert_sane, read
from tests.hostile.world import MODEL, World

pytestmark = pytest.mark.asyncio(loop_scope="package")
ALLOWED = tuple(m.name for m in METHODS)
FILE_PARAMS = {m.name: m.of_kind(Kind.FILE) for m in METHODS}
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
V1 = (
    ("POST", "/v1/ping"),
    ("POST", "/v1/telegram/sendMessage"),
    ("POST", "/v1/telegram/getFile"),
    ("GET", "/v1/telegram/files/BQACAgIAAxkBAAI"),
    ("GET", "/v1/connections"),
    ("POST", "/v1/connections/google/token"),
    ("DELETE", "/v1/connections/google"),
    ("POST", "/v1/ai/messages"),
    ("GET", "/v1/ai/usage"),
)


def is_gateway_refusal(answer: Answer) -> bool:
    """The gateway's own `{"error": "<code>"}` (Telegram's answers carry `ok`, Anthropic's `type`)."""
    if answer.content_type != "application/json":
        return False
    body = answer.json
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def chat_ids(world: World) -> dict[str, st.SearchStrategy[Any]]:
    a, b = world.alice, world.bob
    own = st.sampled_from([a.private_chat, a.group_chat, str(a.private_chat), f" {a.group_chat} "])
    others = st.sampled_from([b.private_chat, b.group_chat, str(b.private_chat), -b.group_chat, 777])
    return {"own": own, "others": others}


@st.composite
def bot_calls(draw: st.DrawFn, world: World) -> tuple[str, dict[str, Any]]:
    a, b = world.alice, world.bob
    ids = chat_ids(world)
    method = draw(st.one_of(st.sampled_from(ALLOWED), st.sampled_from([m.upper() for m in ALLOWED]), hs.path_parts))
    anything = st.one_of(ids["own"], ids["others"], hs.json_values)
    files = st.one_of(st.sampled_from([a.file_id, b.file_id, "attach://doc", "https://example.com/x.jpg"]), anything)
    optional = {
        "chat_id": anything,
        "text": st.one_of(st.text(max_size=40), st.just("x" * 5000), hs.json_values),
        "message_id": st.one_of(st.integers(), hs.json_values),
        "file_id": files,
        "photo": files,
        "document": files,
        "voice": files,
        "thumbnail": files,
        "callback_query_id": st.one_of(st.sampled_from([a.callback_query_id, b.callback_query_id]), anything),
        "inline_message_id": st.one_of(st.text(max_size=10), hs.json_values),
        "reply_parameters": st.one_of(
            st.fixed_dictionaries({"message_id": st.integers(), "chat_id": anything}).map(json.dumps),
            hs.json_values,
        ),
        "entities": st.one_of(st.just('[{"type": "bold", "offset": 0, "length": 9999}]'), hs.json_values),
        "reply_markup": hs.json_values,
        "action": st.sampled_from(["typing", "upload_photo", ""]),
    }
    params = draw(st.fixed_dictionaries({}, optional=optional))
    params.update(draw(st.dictionaries(st.text(max_size=10), hs.json_values, max_size=2)))
    return method, params


def encode(params: dict[str, Any], how: str, upload: bytes | None) -> bytes | dict[str, str] | aiohttp.FormData:
    """The parameters as a JSON body, a form, or multipart with a file."""
    if how == "json":
        try:
            return orjson.dumps(params)
        except TypeError:
            return json.dumps(params).encode()
    # aiohttp's client only writes printable ASCII names in a form (raw requests have their own test).
    sendable = {k: v for k, v in params.items() if k and k.isascii() and not CONTROL.search(k)}
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in sendable.items()}
    if how == "form":
        return fields
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    if upload is not None:
        form.add_field("doc", upload, filename="report.pdf", content_type="application/pdf")
    return form


@FUZZ
@given(data=st.data())
async def test_bot_api_calls_reach_only_the_callers_chats(world: World, data: st.DataObject):
    method, params = data.draw(bot_calls(world))
    how = data.draw(st.sampled_from(["json", "form", "multipart"]))
    upload = data.draw(st.one_of(st.none(), st.binary(max_size=64)))
    before = await world.effects()
    calls_before = len(world.tg.fake.calls)
    url = URL(f"/v1/telegram/{method}", encoded=True)
    headers = {**world.alice.auth, **({"Content-Type": "application/json"} if how == "json" else {})}
    answer = await read(await world.client.post(url, headers=headers, data=encode(params, how, upload)))
    assert_sane(answer, world.secrets)
    assert answer.status in (200, 400, 403, 404, 405, 413, 415, 429), (answer.status, answer.body)
    if is_gateway_refusal(answer):
        assert_error_json(answer)
        assert len(world.tg.fake.calls) == calls_before, "a refused call reached the Bot API"
    after = await world.effects()
    assert after.events_in == before.events_in
    mine = {str(world.alice.private_chat), str(world.alice.group_chat)}
    for call in world.tg.fake.calls[calls_before:]:
        assert call.method in ALLOWED
        if "chat_id" in call.params or call.method not in ("getFile", "answerCallbackQuery"):
            assert str(call.params.get("chat_id")).strip() in mine, call
        for name in (*FILE_PARAMS.get(call.method, ()), *(("file_id",) if call.method == "getFile" else ())):
            assert call.params.get(name) != world.bob.file_id, call
        if call.method == "answerCallbackQuery":
            assert call.params.get("callback_query_id") != world.bob.callback_query_id, call


@FUZZ
@given(file_id=hs.path_parts, query=hs.query_strings())
async def test_file_ids_that_are_not_the_callers_are_404(world: World, file_id: str, query: str):
    before = await world.effects()
    url = URL(f"/v1/telegram/files/{file_id}?{query}", encoded=True)
    answer = await read(await world.client.get(url, headers=world.alice.auth))
    assert_sane(answer, world.secrets)
    assert answer.status == 404, (answer.status, answer.body)
    assert_error_json(answer)
    assert await world.effects() == before


@FUZZ
@given(
    provider=st.one_of(st.sampled_from(["google", "microsoft", "Google", "google/..", "outlook"]), hs.path_parts),
    body=st.one_of(st.none(), hs.bodies({"min_ttl": 300})),
    content_type=hs.content_types,
    query=hs.query_strings(("min_ttl", "provider", "user_id")),
)
async def test_connection_calls_with_garbage_are_4xx_json(
    world: World, provider: str, body: bytes | None, content_type: str | None, query: str
):
    headers = {**world.alice.auth, **({"Content-Type": content_type} if content_type else {})}
    before = await world.effects()
    mine = {world.alice.gmail, world.alice.outlook}
    resp = await world.client.get(URL(f"/v1/connections?{query}", encoded=True), headers=headers)
    answer = await read(resp)
    assert_sane(answer, world.secrets)
    assert answer.status == 200, (answer.status, answer.body)
    assert {c["account"] for c in answer.json} == mine
    resp = await world.client.post(URL(f"/v1/connections/{provider}/token", encoded=True), data=body, headers=headers)
    answer = await read(resp)
    assert_sane(answer, world.secrets)
    if answer.status == 200:
        # Only a known provider and a readable body (or none) get here, and only for the caller's account.
        assert provider in ("google", "microsoft") and answer.json["account"] in mine
    else:
        assert answer.status in (400, 404, 405, 413), (answer.status, answer.body)
        assert_error_json(answer)
    assert await world.effects() == before


VALID_ASK = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}


@FUZZ
@given(
    body=hs.bodies(VALID_ASK, {**VALID_ASK, "stream": True, "system": [{"type": "text", "text": "be brief"}]}),
    content_type=hs.content_types,
    beta=st.one_of(st.none(), hs.header_values),
)
async def test_malformed_ai_requests_never_reach_a_model(
    world: World, body: bytes, content_type: str | None, beta: str | None
):
    headers = {**world.alice.auth}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if beta is not None:
        headers["anthropic-beta"] = beta
    before = await world.effects()
    answer = await read(await world.client.post("/v1/ai/messages", data=body, headers=headers))
    assert_sane(answer, world.secrets, allowed_5xx=(502, 504))
    after = await world.effects()
    assert after.events_in == before.events_in
    if is_gateway_refusal(answer):
        assert answer.status in (400, 413), (answer.status, answer.body)
        assert_error_json(answer)
        assert after.model_calls == before.model_calls, "a refused request reached the model"
    else:
        # The model saw it: a well-formed request, answered or refused by the provider itself.
        assert after.model_calls == before.model_calls + 1
        assert answer.status in (200, 400, 404), (answer.status, answer.body)


@FUZZ
@given(query=hs.query_strings(("month", "user_id", "model")), accept=st.one_of(st.none(), hs.header_values))
async def test_ai_usage_ignores_what_it_does_not_take(world: World, query: str, accept: str | None):
    headers = {**world.alice.auth, **({"Accept": accept} if accept else {})}
    answer = await read(await world.client.get(URL(f"/v1/ai/usage?{query}", encoded=True), headers=headers))
    assert_sane(answer, world.secrets)
    assert answer.status == 200, (answer.status, answer.body)
    assert isinstance(answer.json, dict)


@FUZZ
@given(
    endpoint=st.sampled_from(V1),
    authorization=st.one_of(
        hs.header_values,
        st.sampled_from(
            ["Bearer", "Bearer ", "bearer x", "Basic YWxpY2U6c2VjcmV0", "Bearer ast.alice.", "Bearer ast..x"]
        ),
        hs.header_values.map(lambda s: f"Bearer ast.alice.{s}"),
        hs.header_values.map(lambda s: f"Bearer {s}"),
    ),
)
async def test_any_credential_but_a_real_one_is_401_and_does_nothing(
    world: World, endpoint: tuple[str, str], authorization: str
):
    method, path = endpoint
    if world.alice.token in authorization or world.bob.token in authorization:
        return
    before = await world.effects()
    resp = await world.client.request(method, path, json=VALID_ASK, headers={"Authorization": authorization})
    answer = await read(resp)
    assert_sane(answer, world.secrets)
    assert answer.status == 401, (answer.status, answer.body)
    assert_error_json(answer)
    assert await world.effects() == before


@pytest.mark.parametrize("name", ["\x1f", "chat\nid", "é", "", "a" * 65, "text "])
async def test_parameter_names_the_bot_api_cannot_take_are_400_and_never_sent(world: World, name: str):
    calls = len(world.tg.fake.calls)
    body = orjson.dumps({"text": "hello", name: "x"})
    headers = {**world.alice.auth, "Content-Type": "application/json"}
    answer = await read(await world.client.post("/v1/telegram/sendMessage", data=body, headers=headers))
    assert answer.status == 400, answer.body
    assert assert_error_json(answer) == "invalid_parameter"
    assert len(world.tg.fake.calls) == calls


part_headers = st.lists(
    st.sampled_from(
        [
            b'Content-Disposition: form-data; name="text"',
            b'Content-Disposition: form-data; name="document"; filename="a.pdf"',
            b"Content-Disposition: form-data; name*=UTF-8''%C3%A9",
            b"Content-Disposition: form-data; name=\"document\"; filename*=UTF-8''%FF%FE.pdf",
            b"Content-Disposition: attachment",
            b"Content-Disposition: form-data",
            b'Content-Disposition: form-data; name="chat_id"',
            b"Content-Type: multipart/mixed; boundary=inner",
            b"Content-Type: text/plain; charset=utf-16",
            b"Content-Type: \x01\x02",
            b"Content-Transfer-Encoding: base64",
            b"Content-Transfer-Encoding: quoted-printable",
            b"Content-Transfer-Encoding: x-unknown",
            b"Content-Encoding: gzip",
            b"Content-Encoding: deflate",
            b"Content-Encoding: br",
            b"Content-Length: 99999",
        ]
    ),
    max_size=4,
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(boundary, body): parts with odd headers and contents, sometimes unterminated or misframed."""
    boundary = draw(st.sampled_from([b"b0undary", b"x", b"-" * 70, b"with space"]))
    body = b""
    for _ in range(draw(st.integers(0, 4))):
        body += draw(st.sampled_from([b"--" + boundary + b"\r\n", b"--" + boundary + b"\n", b"--wrong\r\n"]))
        body += b"".join(h + b"\r\n" for h in draw(part_headers)) + b"\r\n"
        body += draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"aGVsbG8=", b"=ZZ", b"\x1f\x8b\x08\x00"])))
        body += b"\r\n"
    body += draw(st.sampled_from([b"--" + boundary + b"--\r\n", b"", b"--" + boundary + b"\r\n"]))
    return boundary, body


@FUZZ
@given(method=st.sampled_from(["sendMessage", "sendDocument", "sendPhoto"]), multipart=multipart_bodies())
async def test_malformed_multipart_is_a_4xx_and_sends_nothing(
    world: World, method: str, multipart: tuple[bytes, bytes]
):
    boundary, body = multipart
    headers = {**world.alice.auth, "Content-Type": f'multipart/form-data; boundary="{boundary.decode()}"'}
    before = await world.effects()
    answer = await read(await world.client.post(f"/v1/telegram/{method}", data=body, headers=headers))
    assert_sane(answer, world.secrets)
    assert answer.status in (200, 400, 403, 404, 413, 415), (answer.status, answer.body)
    after = await world.effects()
    assert after.events_in == before.events_in
    if is_gateway_refusal(answer):
        assert after.bot_api_calls == before.bot_api_calls


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded; charset=no-such-codec", b"text=hi"),
        ("application/x-www-form-urlencoded; charset=utf-16", b"text=%FF%FE"),
        ("application/json; charset=no-such-codec", b'{"text": "hi"}'),
        ("multipart/form-data", b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--b--\r\n'),
    ],
)
async def test_an_unknown_charset_or_a_missing_boundary_is_a_4xx(world: World, content_type: str, body: bytes):
    before = await world.effects()
    headers = {**world.alice.auth, "Content-Type": content_type}
    answer = await read(await world.client.post("/v1/telegram/sendMessage", data=body, headers=headers))
    assert_sane(answer, world.secrets)
    if "json" in content_type:
        assert answer.status == 200  # JSON is UTF-8 whatever the header says, as RFC 8259 has it
        return
    assert 400 <= answer.status < 500, (answer.status, answer.body)
    assert (await world.effects()).bot_api_calls == before.bot_api_calls
