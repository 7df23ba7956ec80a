"""Hostile input against the core endpoints (admin and server APIs): random and malformed
bodies, headers, query strings and path parts never get a 5xx or a traceback and queue
nothing; oversized bodies get 413 before being read whole; slow bodies time out; and in
production delivery refuses to connect to anything but a public address."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from foundation import http as gateway_http
from foundation.config import Settings
from foundation.types import Event
from gateway.app import create_app
from routing.handoff import Item
from routing.services import SERVICES
from routing.urls import PublicOnlyResolver, is_public_address, validate_server_url
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import ADMIN_TOKEN, Gateway, make_settings, random_public_key, wipe
from tests.support.listener import Listener


@dataclasses.dataclass
class Served:
    port: int
    settings: Settings
    loop: asyncio.AbstractEventLoop
    app: web.Application

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One real gateway on a loopback port, in its own thread, for many hypothesis examples."""
    settings_ = make_settings(tmp_path_factory.mktemp("hostile"))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        app = create_app(settings_)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["port"] = runner.addresses[0][1]
        holder["app"] = app
        holder["stop"] = asyncio.Event()
        ready.set()
        await holder["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    s = Served(holder["port"], settings_, loop, holder["app"])
    try:
        yield s
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
        loop.close()
        asyncio.run(wipe(settings_.key_prefix))


def assert_clean(status: int, body: bytes) -> None:
    assert status < 500, body
    assert b"Traceback" not in body
    assert b'File "' not in body
    if status >= 400:
        document = json.loads(body)
        assert isinstance(document["error"], str)


def queued(served: Served) -> int:
    async def count() -> int:
        services = served.app[SERVICES]
        total = 0
        async for key in services.redis.scan_iter(match=f"{served.settings.key_prefix}*:q"):
            total += int(await services.redis.xlen(key))
        return total

    return int(served.run(count()))


segments = st.one_of(
    st.text(min_size=0, max_size=80),
    st.sampled_from(["..", ".", "%00", "%2F", "alice", "a" * 65, "{u:x}", "*", "ü", "%ff"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
user_bodies = st.fixed_dictionaries(
    {},
    optional={
        "server_url": st.one_of(
            st.text(max_size=60),
            st.sampled_from(
                [
                    "https://srv.example",
                    "http://127.0.0.1:1",
                    "https://[::1]",
                    "https://user:pw@x.example",
                    "javascript:alert(1)",
                    "https://x.example/?q=1",
                    "https://" + "a" * 3000,
                ]
            ),
            json_values,
        ),
        "server_public_key": st.one_of(st.text(max_size=60), st.just(random_public_key()), json_values),
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    user_bodies.map(lambda v: json.dumps(v).encode()),
    st.just(b"{" * 5000),
    st.just(b'{"server_url": "\\ud800"}'),
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
auths = st.one_of(
    st.just(f"Bearer {ADMIN_TOKEN}"),
    st.just("Bearer ast.alice.x"),
    st.just("Bearer"),
    st.just("Basic dXNlcjpwYXNz"),
    header_values,
)
HOSTILE = examples(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HOSTILE
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH"]),
    segment=segments,
    tail=st.sampled_from(["", "/export", "/credentials/rotate", "/telegram/link", "/connect", "/nope"]),
    query=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
    body=bodies,
    auth=auths,
    content_type=st.sampled_from(["application/json", "text/plain", "", "multipart/form-data; boundary=x"]),
)
def test_admin_api_survives_anything(
    served: Served, method: str, segment: str, tail: str, query: dict[str, str], body: bytes, auth: str,
    content_type: str,
) -> None:  # fmt: skip
    path = "/admin/v1/users/" + urllib.parse.quote(segment, safe="%") + tail
    if query:
        path += "?" + urllib.parse.urlencode(query)
    headers = {"Authorization": auth}
    if content_type:
        headers["Content-Type"] = content_type
    status, answer = served.request(method, path, body if method in ("PUT", "POST", "PATCH") else None, headers)
    assert_clean(status, answer)
    assert queued(served) == 0


@HOSTILE
@given(
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.one_of(st.just("/v1/ping"), segments.map(lambda s: "/v1/" + urllib.parse.quote(s, safe="%/"))),
    body=bodies,
    auth=auths,
    extra=st.dictionaries(
        st.sampled_from(["X-Request-Id", "Content-Encoding", "Accept", "X-Forwarded-For", "Cookie"]),
        header_values,
        max_size=3,
    ),
)
def test_server_api_survives_anything(
    served: Served, method: str, path: str, body: bytes, auth: str, extra: dict[str, str]
) -> None:
    status, answer = served.request(method, path, body, {"Authorization": auth, **extra})
    assert_clean(status, answer)
    assert queued(served) == 0


def raw_exchange(port: int, head: bytes, parts: list[bytes], wait: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head)
        for part in parts:
            sock.sendall(part)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b'"error"' in b"".join(chunks):
                break
        return b"".join(chunks)


def test_a_declared_huge_body_is_refused_413_before_it_is_sent(served: Served):
    head = (
        b"PUT /admin/v1/users/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 104857600\r\n\r\n"
    )
    answer = raw_exchange(served.port, head, [b"{" * 1000])  # 100 MB announced, 1 KB sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer


def test_a_chunked_body_over_the_limit_is_cut_off_with_413(served: Served):
    head = (
        b"PUT /admin/v1/users/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"  # 16 KiB each; the admin limit is 16 KiB
    answer = raw_exchange(served.port, head, [chunk, chunk])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_body_that_trickles_in_times_out_with_408(served: Served, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(gateway_http, "BODY_TIMEOUT", 1.0)
    head = (
        b"PUT /admin/v1/users/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n"
    )
    answer = raw_exchange(served.port, head, [b'{"server_url": '])  # then nothing more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer


# --- SSRF -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200", "0.0.0.0",
     "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "224.0.0.1",
     "not-an-ip"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str):
    assert is_public_address(address)


@pytest.mark.parametrize(
    "url",
    ["http://srv.example", "https://127.0.0.1", "https://10.0.0.8", "https://169.254.169.254/latest",
     "https://[::ffff:10.0.0.1]", "https://localhost", "https://a.localhost", "https://metadata.google.internal"],
)  # fmt: skip
def test_production_refuses_plain_http_and_private_server_urls(url: str):
    with pytest.raises(Exception, match="server_url"):
        validate_server_url(url, production=True)


async def test_the_resolver_refuses_a_name_that_resolves_to_loopback():
    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="non-public"):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    env = getattr(request, "param", "development")
    return make_settings(tmp_path, env=env)


@pytest.mark.parametrize("settings", ["production", "development"], indirect=True)
async def test_production_delivery_checks_the_address_when_it_connects(gateway: Gateway, dedicated: DedicatedServer):
    # The machine's own name: registration lets a name through (it is not an IP literal), yet
    # it resolves to a loopback or private address, as a rebound DNS name would.
    name = socket.gethostname()
    address = str((await asyncio.get_running_loop().getaddrinfo(name, None, family=socket.AF_INET))[0][4][0])
    assert not is_public_address(address), f"{name} resolves to a public address here"
    listener = Listener()
    port = await listener.start(address)
    try:
        services = gateway.services
        key = dedicated.new_user("rebound")
        url = validate_server_url(f"https://{name}:{port}", production=True)
        await services.registry.put("rebound", url, key)
        await services.handoff("rebound", [Item(Event("telegram.update", "telegram", {"update_id": 1}))])
        for _ in range(50):
            status = await (await gateway.admin("GET", "/admin/v1/users/rebound")).json()
            if status["server"]["last_failure"]:
                break
            await asyncio.sleep(0.05)
        assert status["server"]["last_failure"] == "unreachable"
        if gateway.settings.production:
            assert listener.accepted == 0, "the resolver refused before any connection"
        else:
            assert listener.accepted >= 1, "outside production the same URL is connected to"
    finally:
        await listener.close()


async def test_redirects_are_not_followed(gateway: Gateway, dedicated: DedicatedServer):
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path.startswith("/moved"):
            return web.json_response({"ok": True})
        raise web.HTTPTemporaryRedirect(f"/moved{request.path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        key = dedicated.new_user("redirected")
        resp = await gateway.admin(
            "PUT",
            "/admin/v1/users/redirected",
            json={"server_url": f"http://127.0.0.1:{port}", "server_public_key": key},
        )
        assert resp.status == 201
        await gateway.services.handoff("redirected", [Item(Event("telegram.update", "telegram", {"update_id": 1}))])
        for _ in range(50):
            if hits:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert hits and not any(h.startswith("/moved") for h in hits)
        status = await (await gateway.admin("GET", "/admin/v1/users/redirected")).json()
        assert status["server"]["last_failure"] == "http_307"
        assert status["queue"]["pending"] == 1
    finally:
        await runner.cleanup()
