"""The production SSRF guard against host spellings a URL parser folds into a private address.

yarl (and so aiohttp) reads a host the way browsers do: `https://１２７.０.０.１/` is a request
to 127.0.0.1, made to the IP literal without asking any resolver. Registration must see what
aiohttp will see, and the connection itself must check the address it is about to reach."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from foundation.config import Settings
from foundation.types import Event
from routing.handoff import Item
from routing.urls import public_only_connector, public_socket, validate_server_url
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, make_settings
from tests.support.listener import Listener
from tests.support.waiting import eventually

LOOPBACK_SPELLINGS = [
    "https://１２７.０.０.１",  # fullwidth digits and full stops
    "https://127。0。0。1",  # ideographic full stops
    "https://①②⑦.0.0.1",  # circled digits
    "https://127．0．0．1",  # fullwidth full stops
    "https://0x7f000001",  # one hexadecimal number
    "https://2130706433",  # one decimal number
    "https://127.1",  # short form
    "https://0177.0.0.1",  # octal part
    "https://0x7f.0.0.1",  # hexadecimal part
    "https://127%2e0%2e0%2e1",  # percent-encoded dots
    "https://[::127.0.0.1]",  # IPv4-compatible IPv6
    "https://[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "https://[::ffff:0:7f00:1]",  # IPv4-translated IPv6
    "https://localhost.",  # trailing dot
]
PRIVATE_SPELLINGS = [
    "https://１０.０.０.１",
    "https://169。254。169。254/latest",
    "https://0xa9fea9fe",
    "https://⑩.0.0.1",
]


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return make_settings(tmp_path, env=getattr(request, "param", "production"))


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    found = Listener()
    try:
        yield found
    finally:
        await found.close()


async def register(gateway: Gateway, user_id: str, url: str) -> Any:
    body = {"server_url": url, "server_public_key": DedicatedServer().new_user(user_id)}
    return await gateway.admin("PUT", f"/admin/v1/users/{user_id}", json=body)


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS + PRIVATE_SPELLINGS)
async def test_a_private_address_in_any_spelling_is_refused_at_registration(gateway: Gateway, url: str):
    resp = await register(gateway, "spelled", url)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"] == "invalid_server_url"
    assert (await gateway.admin("GET", "/admin/v1/users/spelled")).status == 404, "nothing was stored"


@pytest.mark.parametrize("settings", ["production", "development"], indirect=True)
@pytest.mark.parametrize("url", ["https://bücher.example", "https://a b.example", "https://[fe80::1%25eth0]"])
async def test_a_host_that_is_not_plain_ascii_after_normalizing_is_refused(gateway: Gateway, url: str):
    resp = await register(gateway, "idn", url)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"] == "invalid_server_url"
    assert (await gateway.admin("GET", "/admin/v1/users/idn")).status == 404


@pytest.mark.parametrize(
    ("url", "stored"),
    [("https://Srv.Example./hook/", "https://srv.example./hook"), ("https://ｓｒｖ.example/hook", "https://srv.example/hook"),
     ("https://xn--bcher-kva.de", "https://xn--bcher-kva.de")],
)  # fmt: skip
async def test_a_public_name_is_stored_as_a_url_parser_reads_it(gateway: Gateway, url: str, stored: str):
    resp = await register(gateway, "named", url)
    assert resp.status == 201, await resp.text()
    status = await (await gateway.admin("GET", "/admin/v1/users/named")).json()
    assert status["server_url"] == stored


@pytest.mark.parametrize("settings", ["development"], indirect=True)
async def test_the_normalized_url_is_what_delivery_uses(gateway: Gateway, dedicated: DedicatedServer):
    key = dedicated.new_user("folded")
    spelled = dedicated.url("folded").replace("127.0.0.1", "①②⑦。０.0.1")
    resp = await gateway.admin("PUT", "/admin/v1/users/folded", json={"server_url": spelled, "server_public_key": key})
    body = await resp.json()
    assert resp.status == 201, body
    dedicated.secrets["folded"] = [body["webhook_secret"]]
    status = await (await gateway.admin("GET", "/admin/v1/users/folded")).json()
    assert status["server_url"] == dedicated.url("folded")
    await gateway.services.handoff("folded", [Item(Event("telegram.update", "telegram", {"update_id": 7}))])
    await dedicated.wait_for(lambda: len(dedicated.events("folded")) == 1)


async def test_a_url_stored_before_the_guard_is_never_connected_to(gateway: Gateway, listener: Listener):
    port = await listener.start()
    services = gateway.services
    # Written straight to the registry, as registration let it through before hosts were normalized.
    await services.registry.put("stored", f"https://１２７.０.０.１:{port}", DedicatedServer().new_user("stored"))
    await services.handoff("stored", [Item(Event("telegram.update", "telegram", {"update_id": 1}))])

    async def failed() -> bool:
        status = await (await gateway.admin("GET", "/admin/v1/users/stored")).json()
        return status["server"]["last_failure"] is not None

    await eventually(failed)
    assert listener.accepted == 0, "nothing was sent to the loopback address"


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_production_connections_to_an_ip_literal_are_refused_at_connect_time(
    gateway: Gateway, listener: Listener, host: str
):
    port = await listener.start()
    # The gateway's own outbound session, the one delivery and the providers use: aiohttp
    # connects to an IP literal without a resolver, so only the connection can refuse it.
    with pytest.raises(aiohttp.ClientConnectorError):
        await gateway.services.session.get(f"http://{host}:{port}/")
    assert listener.accepted == 0


class LyingResolver(AbstractResolver):
    """A DNS answer rebound to loopback, as an attacker's name server would give."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("guarded", [True, False])
async def test_a_name_resolving_to_a_private_address_is_refused_when_connecting(listener: Listener, guarded: bool):
    port = await listener.start()
    connector = public_only_connector(LyingResolver()) if guarded else aiohttp.TCPConnector(resolver=LyingResolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        if guarded:
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(f"http://rebound.example:{port}/")
            assert listener.accepted == 0
        else:
            # The control: without the guard, the same answer is connected to.
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://rebound.example:{port}/")
            assert listener.accepted >= 1


def test_the_connect_time_check_lets_a_public_address_through():
    sock = public_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)))
    sock.close()
    with pytest.raises(OSError):
        public_socket((socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::7f00:1", 443, 0, 0)))


@pytest.mark.parametrize(
    ("url", "normalized"),
    [("https://0x08080808", "https://8.8.8.8"), ("https://134744072/x/", "https://8.8.8.8/x"),
     ("https://８.８.８.８:8443", "https://8.8.8.8:8443"), ("https://8.8.2056", "https://8.8.8.8")],
)  # fmt: skip
def test_a_public_address_in_a_numeric_spelling_is_stored_plainly(url: str, normalized: str):
    assert validate_server_url(url, production=True) == normalized


@pytest.mark.parametrize("url", ["https://1.2.3.4.5", "https://256.0.0.1", "https://srv.09", "https://host:８０"])
def test_hosts_a_url_parser_would_refuse_are_refused(url: str):
    with pytest.raises(Exception, match="server_url"):
        validate_server_url(url, production=False)
