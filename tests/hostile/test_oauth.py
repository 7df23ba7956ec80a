"""The browser side of the connect flow under hostile input: `GET /oauth/connect/{session}` and
`GET /oauth/callback/{provider}` with made-up sessions, states, codes, errors and cookies.
Never a 5xx or an internal detail; a request that cannot be tied to a flow is a JSON error; one
that can always ends at the flow's own return_url (never anywhere else) with a reason code."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from oauth.connect import FLOWS
from tests.hostile import strategies as hs
from tests.hostile.checks import assert_error_json, assert_sane, read
from tests.hostile.world import RETURN_URL, World, new_flow

pytestmark = pytest.mark.asyncio(loop_scope="package")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CALLBACK_PARAMS = ["code", "error", "error_description", "scope", "authuser", "prompt", "iss"]
REASONS = {
    "access_denied", "bad_state", "expired_session", "session_used", "provider_error", "internal_error",
    "account_mismatch",
}  # fmt: skip

cookies = st.dictionaries(
    st.one_of(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=';,="\\'), min_size=1)),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=';,"\\'), max_size=60),
    max_size=3,
)


def cookie_header(values: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in values.items())} if values else {}


@FUZZ
@given(session=hs.path_parts, query=hs.query_strings(("state", "code")), jar=cookies)
async def test_made_up_connect_sessions_are_404(world: World, session: str, query: str, jar: dict[str, str]):
    before = await world.effects()
    url = URL(f"/oauth/connect/{session}?{query}", encoded=True)
    answer = await read(await world.client.get(url, headers=cookie_header(jar), allow_redirects=False))
    assert_sane(answer, world.secrets)
    assert answer.status == 404, (answer.status, answer.body)
    assert "location" not in answer.headers and "set-cookie" not in answer.headers
    assert assert_error_json(answer) in ("connect_session_not_found", "not_found")
    assert await world.effects() == before


@FUZZ
@given(
    provider=st.one_of(st.sampled_from(["google", "microsoft"]), hs.path_parts),
    query=hs.query_strings(("state", "code", "error", "scope")),
    jar=cookies,
)
async def test_callbacks_with_a_state_never_issued_are_refused_as_json(
    world: World, provider: str, query: str, jar: dict[str, str]
):
    before = await world.effects()
    url = URL(f"/oauth/callback/{provider}?{query}", encoded=True)
    answer = await read(await world.client.get(url, headers=cookie_header(jar), allow_redirects=False))
    assert_sane(answer, world.secrets)
    assert answer.status in (400, 404), (answer.status, answer.body)
    assert "location" not in answer.headers
    assert_error_json(answer)
    assert await world.effects() == before


@FUZZ
@given(
    data=st.data(),
    extra=st.dictionaries(
        st.sampled_from(["code", "error", "scope", "authuser", "prompt", "iss"]), st.text(max_size=40)
    ),
    cookie=st.sampled_from(["genuine", "missing", "forged", "other_name"]),
    provider=st.sampled_from(["google", "microsoft"]),
)
async def test_a_genuine_state_with_anything_else_ends_at_the_return_url_with_a_reason(
    world: World, data: st.DataObject, extra: dict[str, str], cookie: str, provider: str
):
    state, name, value = await new_flow(world)
    jar: dict[str, Any] = {
        "genuine": {name: value},
        "missing": {},
        "forged": {name: data.draw(cookies.map(lambda c: "".join(c.values())[:40] or "x"))},
        "other_name": {name[:-1] + "x": value},  # cookie names end in hex: never the genuine one
    }[cookie]
    before = await world.effects()
    query = urlencode({"state": state, **extra})
    url = URL(f"/oauth/callback/{provider}?{query}", encoded=True)
    answer = await read(await world.client.get(url, headers=cookie_header(jar), allow_redirects=False))
    assert_sane(answer, world.secrets)
    assert answer.status == 302, (answer.status, answer.body)
    location = answer.headers["location"]
    assert location.startswith(RETURN_URL.split("?")[0] + "?"), location
    outcome = parse_qs(urlsplit(location).query)
    assert outcome["status"] == ["error"] and outcome["reason"][0] in REASONS, outcome
    if cookie != "genuine" or provider != "google":
        assert outcome["reason"] == ["bad_state"]
    after = await world.effects()
    assert after.events_in == before.events_in
    resp = await world.client.get(url, headers=cookie_header(jar), allow_redirects=False)
    if cookie == "genuine":
        assert resp.status == 400, "a state is good for one callback"
    else:
        # Only the browser the flow was bound to can spend its state; anyone else leaves it be.
        assert resp.status == 302 and "reason=bad_state" in resp.headers["Location"]
        assert await world.client.app[FLOWS].state(state), "the user's flow is still there"
