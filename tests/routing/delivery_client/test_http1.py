"""The delivery's HTTP client against servers that answer as written here, byte for byte: reuse
of kept-alive connections, and every way a server's answer must not be trusted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from routing import http1
from routing.http1 import AnswerError, Client
from tests.support.tlsca import mint

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 204 No Content\r\n\r\n"


class Server:
    """A loopback TCP server running `handler` per connection, counting connections and requests."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.host = host
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    def url(self, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def answering(*answers: bytes, then_close: bool = False) -> Callable[[Server], Handler]:
    """Per connection: read a request, write the next answer, for as long as there are answers."""

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers if then_close else iter(lambda: answers[0], None):
                await server.read_request(reader)
                writer.write(answer)
                await writer.drain()
            if then_close:
                writer.close()

        return handler

    return make


@contextlib.asynccontextmanager
async def serving(make: Callable[[Server], Handler], **options: object) -> AsyncIterator[Server]:
    server = Server(lambda r, w: asyncio.sleep(0), **options)  # type: ignore[arg-type]
    server.handler = make(server)
    async with server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    made = Client(production=False, tls=ssl.create_default_context())
    try:
        yield made
    finally:
        await made.close()


HEADERS = [("webhook-id", "txn_1"), ("Content-Type", "application/json")]
PATH = "/ally/v1/transactions/txn_1"


async def test_requests_reuse_one_kept_alive_connection(client: Client):
    async with serving(answering(OK)) as server:
        for n in range(5):
            answer = await client.put(server.url(), PATH, HEADERS, b'{"n":%d}' % n, limit=1024)
            assert answer.status == 204
        assert server.connections == 1
        assert len(server.requests) == 5
        first = server.requests[0]
        assert first.startswith(b"PUT /ally/v1/transactions/txn_1 HTTP/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:%d\r\n" % server.port in first.lower()
        assert first.endswith(b'{"n":0}')


async def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_once(client: Client):
    # Each connection carries one answer, then the server closes it without saying so.
    async with serving(answering(OK, then_close=True)) as server:
        for _ in range(4):
            assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204
            await asyncio.sleep(0.01)
        assert server.connections >= 4 and len(server.requests) == 4


async def test_a_server_closing_right_after_answering_costs_no_failed_request(client: Client):
    # The close arrives while the next request is on its way: the request goes again on a new
    # connection (a delivery is idempotent) and the caller sees one answer.
    async with serving(answering(OK, then_close=True)) as server:
        for _ in range(10):
            assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204
        assert len(server.requests) >= 10


async def test_an_answer_over_the_limit_is_not_read_and_its_connection_not_reused(client: Client):
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n" + b"x" * 1_000_000

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(huge)
            await asyncio.sleep(30)  # the rest never comes

        return handler

    async with serving(make) as server:
        started = time.monotonic()
        answer = await asyncio.wait_for(client.put(server.url(), PATH, HEADERS, b"{}", limit=64 * 1024), 10)
        assert answer.status == 200
        assert time.monotonic() - started < 5
    async with serving(answering(OK)) as other:
        assert (await client.put(other.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204


async def test_chunked_answers_are_read_to_their_end_and_the_connection_reused(client: Client):
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    async with serving(answering(chunked)) as server:
        for _ in range(3):
            assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 200
        assert server.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        # More than the answer: whatever follows must not become the next request's answer.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_a_connection_that_may_not_carry_another_answer_is_not_reused(client: Client, answer: bytes):
    async with serving(answering(answer)) as server:
        for _ in range(3):
            assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 200
        assert server.connections == 3


async def test_interim_answers_are_skipped_and_retry_after_and_redirects_come_back_as_sent(client: Client):
    early = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b"HTTP/1.1 503 Busy\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n"
    )
    async with serving(answering(early)) as server:
        answer = await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)
        assert (answer.status, answer.retry_after) == (503, "120")
    moved = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n"
    async with serving(answering(moved)) as server:
        assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 302
        assert server.connections == 1 and len(server.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 1_000_000 + b"\r\n\r\n",  # a head far over MAX_HEAD
        # What a strict parser refuses: a protocol switch, both framings, a bad chunk size, a folded line.
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_a_malformed_or_cut_answer_is_an_error_never_a_status(client: Client, answer: bytes):
    async with serving(answering(answer, then_close=True)) as server:
        with pytest.raises(AnswerError):
            await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)


async def test_a_cut_short_request_closes_its_connection(client: Client):
    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            if server.connections == 1:
                await asyncio.sleep(30)  # the first connection never answers
            writer.write(OK)
            await server.read_request(reader)
            writer.write(OK)

        return handler

    async with serving(make) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)
        assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204
        assert server.connections == 2


async def test_tls_checks_the_servers_name(tmp_path: Path):
    pki = mint(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.cert_file, pki.key_file)
    client_tls = ssl.create_default_context(cafile=str(pki.ca_file))
    client = Client(production=False, tls=client_tls)
    try:
        async with serving(answering(OK), host="0.0.0.0", tls=server_tls) as server:
            for _ in range(3):
                assert (await client.put(server.url(scheme="https"), PATH, HEADERS, b"{}", limit=1024)).status == 204
            assert server.connections == 1  # kept alive over TLS too
            # The same server under an address its certificate does not name.
            with pytest.raises(ssl.SSLError):
                await client.put(server.url("127.0.0.2", scheme="https"), PATH, HEADERS, b"{}", limit=1024)
        # Without the test CA nothing is trusted.
        untrusting = Client(production=False, tls=ssl.create_default_context())
        async with serving(answering(OK), tls=server_tls) as server:
            with pytest.raises(ssl.SSLError):
                await untrusting.put(server.url(scheme="https"), PATH, HEADERS, b"{}", limit=1024)
        await untrusting.close()
    finally:
        await client.close()


class Rebinding(AbstractResolver):
    """A name server's answer that points a public-looking name at loopback."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


async def test_production_connects_to_public_addresses_only():
    async with serving(answering(OK)) as server:
        guarded = Client(production=True, tls=ssl.create_default_context())
        try:
            for url in (server.url(), server.url("[::ffff:127.0.0.1]")):
                with pytest.raises(OSError, match="non-public"):
                    await guarded.put(url, PATH, HEADERS, b"{}", limit=1024)
        finally:
            await guarded.close()
        rebound = Client(production=True, tls=ssl.create_default_context(), resolver=Rebinding())
        try:
            with pytest.raises(OSError, match="non-public"):
                await rebound.put(server.url("ally-user.example"), PATH, HEADERS, b"{}", limit=1024)
        finally:
            await rebound.close()
        assert server.connections == 0
        # The control: outside production the same answer is connected to.
        open_client = Client(production=False, tls=ssl.create_default_context(), resolver=Rebinding())
        try:
            answer = await open_client.put(server.url("ally-user.example"), PATH, HEADERS, b"{}", limit=1024)
            assert answer.status == 204
        finally:
            await open_client.close()
        assert server.connections == 1


async def test_idle_connections_past_their_time_are_closed_by_the_next_request(
    client: Client, monkeypatch: pytest.MonkeyPatch
):
    import routing.http1

    async with serving(answering(OK)) as quiet, serving(answering(OK)) as busy:
        assert (await client.put(quiet.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204
        monkeypatch.setattr(routing.http1, "IDLE_TIMEOUT", 0.05)
        await asyncio.sleep(0.1)
        # A request to another server sweeps the quiet server's connection away.
        assert (await client.put(busy.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204
        assert client._idle_count == 1
        assert list(client._idle) == [routing.http1._Origin(False, "127.0.0.1", busy.port, f"127.0.0.1:{busy.port}")]


async def test_an_answer_framed_by_the_connections_end_is_read_and_the_connection_not_reused(client: Client):
    closing = b"HTTP/1.1 202 Accepted\r\n\r\nno length, the end is the close"
    async with serving(answering(closing, then_close=True)) as server:
        for _ in range(2):
            assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 202
        assert server.connections == 2


async def test_bytes_sent_between_answers_never_answer_the_next_request(client: Client):
    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            await writer.drain()
            await asyncio.sleep(0.05)
            # Unasked for, while the connection is idle: it would be the next request's answer.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await server.read_request(reader)
            writer.write(OK)

        return handler

    async with serving(make) as server:
        assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204
        await asyncio.sleep(0.2)
        assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204
        assert server.connections == 2


async def test_what_is_sent_is_built_from_checked_parts(client: Client):
    async with serving(answering(OK)) as server:
        # A path stored with characters a request line cannot carry goes percent-encoded.
        base = server.url() + "/bots/ü ser"
        assert (await client.put(base, PATH, HEADERS, b"{}", limit=1024)).status == 204
        assert server.requests[-1].startswith(b"PUT /bots/%C3%BC%20ser/ally/v1/transactions/txn_1 HTTP/1.1\r\n")
        assert (await client.put(server.url() + "/a%2Fb%zz%", PATH, HEADERS, b"{}", limit=1024)).status == 204
        assert server.requests[-1].startswith(b"PUT /a%2Fb%25zz%25/ally/v1/transactions/txn_1 HTTP/1.1\r\n")
        sent = len(server.requests)
        for headers in (
            [("webhook-id", "txn_1\r\nX-Injected: 1")],
            [("webhook-id", "txn_1\nX: 1")],
            [("bad name", "v")],
            [("webhook-id", "ü")],
        ):
            with pytest.raises(OSError):
                await client.put(server.url(), PATH, headers, b"{}", limit=1024)
        with pytest.raises(OSError):
            await client.put(server.url(), "/x\r\nX: 1", HEADERS, b"{}", limit=1024)
        for url in (
            "ftp://127.0.0.1/",
            "http://user:pw@127.0.0.1/",
            f"http://127.0.0.1:{server.port}/?q=1",
            "http:///x",
        ):
            with pytest.raises(OSError):
                await client.put(url, PATH, HEADERS, b"{}", limit=1024)
        assert len(server.requests) == sent


async def test_a_large_body_arrives_whole_and_an_ipv6_host_is_named_in_brackets(client: Client):
    body = bytes(range(256)) * 8192  # 2 MiB
    async with serving(answering(OK)) as server:
        assert (await client.put(server.url(), PATH, HEADERS, body, limit=1024)).status == 204
        assert server.requests[-1].endswith(body)
    if not socket.has_ipv6:
        return
    try:
        six = Server(lambda r, w: asyncio.sleep(0), host="::1")
        six.handler = answering(OK)(six)
        async with six:
            assert (await client.put(six.url("[::1]"), PATH, HEADERS, b"{}", limit=1024)).status == 204
            assert b"\r\nHost: [::1]:%d\r\n" % six.port in six.requests[-1]
    except OSError as exc:  # no IPv6 loopback on this machine
        pytest.skip(f"no IPv6 loopback: {exc}")


@pytest.mark.parametrize(
    ("first", "endless"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"X-Filler: " + b"y" * 100 + b"\r\n"),  # header lines without end
        (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </y>\r\n\r\n"),  # interim answers without end
    ],
    ids=["header lines", "interim answers"],
)
@pytest.mark.parametrize("at_the_bound", [False, True], ids=["piece by piece", "the bound, then a little"])
async def test_a_head_that_never_ends_is_cut_at_max_head_not_at_the_timeout(
    client: Client, first: bytes, endless: bytes, at_the_bound: bool
):
    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            # The connection stays open: only the client's own bound ends this answer.
            head = first + endless * (1 + 2 * http1.MAX_HEAD // len(endless))
            if at_the_bound:
                # Exactly MAX_HEAD bytes, read before anything else comes; then a few bytes over
                # the bound and nothing after them: no later read in which to notice the bound.
                writer.write(head[: http1.MAX_HEAD])
                await writer.drain()
                await asyncio.sleep(0.3)
                writer.write(head[http1.MAX_HEAD : http1.MAX_HEAD + 100])
            else:
                writer.write(first)
                for start in range(len(first), len(head), len(endless)):
                    writer.write(head[start : start + len(endless)])
                    await writer.drain()
            await asyncio.sleep(30)

        return handler

    async with serving(make) as server:
        with pytest.raises(AnswerError, match="head is too large"):
            await asyncio.wait_for(client.put(server.url(), PATH, HEADERS, b"{}", limit=1024), 10)


class Counting(Rebinding):
    """Resolves every name to 127.0.0.1 and counts the lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        self.lookups += 1
        return await super().resolve(host, port, family)


async def test_a_names_addresses_serve_new_connections_until_none_of_them_connects(monkeypatch: pytest.MonkeyPatch):
    resolver = Counting()
    client = Client(production=False, tls=ssl.create_default_context(), resolver=resolver)

    async def one_connection_each(times: int) -> int:
        async with serving(answering(OK, then_close=True)) as server:
            for _ in range(times):
                answer = await client.put(server.url("ally-user.example"), PATH, HEADERS, b"{}", limit=1024)
                assert answer.status == 204
                await asyncio.sleep(0.02)
            assert server.connections == times
            return server.port

    try:
        port = await one_connection_each(3)
        assert resolver.lookups == 1
        # The server is gone: the first attempt tries the addresses it has and forgets them, the
        # next one asks again.
        for _ in range(2):
            with pytest.raises(OSError):
                await client.put(f"http://ally-user.example:{port}", PATH, HEADERS, b"{}", limit=1024)
        assert resolver.lookups == 2
        # And what was looked up lasts DNS_TTL.
        monkeypatch.setattr(http1, "DNS_TTL", 0.0)
        await one_connection_each(2)
        assert resolver.lookups == 4
    finally:
        await client.close()


async def test_an_answer_before_the_whole_body_went_out_does_not_leave_its_connection_for_the_next(client: Client):
    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if server.connections == 1:
                await reader.readuntil(b"\r\n\r\n")
                # Refused on its head alone; the body is neither read nor waited for.
                writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                # What comes next on this connection is the rest of the body, then whatever the
                # client sends after it: a next request here would get a wrong answer.
                seen = b""
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        while b"PUT /" not in seen:
                            chunk = await reader.read(1 << 20)
                            if not chunk:
                                return
                            seen = seen[-8:] + chunk
                        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        await writer.drain()
                return
            await server.read_request(reader)
            writer.write(OK)

        return handler

    async with serving(make) as server:
        big = b"x" * (64 << 20)
        assert (await client.put(server.url(), PATH, HEADERS, big, limit=1024)).status == 413
        assert (await client.put(server.url(), PATH, HEADERS, b"{}", limit=1024)).status == 204
        assert server.connections == 2


async def test_a_host_serving_many_users_keeps_its_concurrent_connections_between_waves(client: Client):
    async with serving(answering(OK)) as server:
        for _ in range(3):
            answers = await asyncio.gather(
                *(client.put(server.url() + f"/users/u{n}", PATH, HEADERS, b"{}", limit=1024) for n in range(100))
            )
            assert {a.status for a in answers} == {204}
        assert server.connections == 100 and len(server.requests) == 300
