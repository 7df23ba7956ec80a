"""A dedicated server for tests: verifies Standard Webhooks signatures, opens sealed events
with the private key their `kid` names and records every transaction. Its behaviour can be switched to fail,
hang or answer Retry-After, like a real server that is down or sick."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from routing import signing
from routing.sealing import PrivateKey, SuiteName, b64url, kid_of, open_sealed
from routing.transactions import MAX_TXN_BYTES


def new_key(suite: SuiteName) -> tuple[PrivateKey, bytes]:
    """A private key of `suite` and its raw public key as the admin API takes it."""
    x25519 = X25519PrivateKey.generate()
    if suite == "X25519":
        return x25519, x25519.public_key().public_bytes_raw()
    mlkem = MLKEM768PrivateKey.generate()
    raw = mlkem.public_key().public_bytes_raw() + x25519.public_key().public_bytes_raw()
    return hpke.MLKEM768X25519PrivateKey(mlkem, x25519), raw


@dataclass
class Received:
    txn_id: str
    headers: dict[str, str]
    body: dict[str, Any]
    opened: list[dict[str, Any]]
    user_id: str


@dataclass
class DedicatedServer:
    """One process can stand for many users' servers: the user is named in the URL path."""

    keyrings: dict[str, dict[str, PrivateKey]] = field(default_factory=dict)
    """Per user, every private key it holds by kid (old ones stay until the test drops them)."""
    secrets: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    attempts: list[tuple[str, str]] = field(default_factory=list)
    mode: dict[str, str] = field(default_factory=dict)
    retry_after: str | None = None
    delay: float = 0.0
    """Seconds a server in mode `slow` takes before it answers."""
    bodies: dict[str, set[bytes]] = field(default_factory=dict)
    """Every distinct body seen per txn_id, failed attempts included."""
    attempt_times: list[tuple[str, str, float]] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    overlaps: list[tuple[str, str]] = field(default_factory=list)
    """(user, txn_id) of every request that arrived while another of the same user was open."""
    server: TestServer | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def new_user(self, user_id: str, suite: SuiteName = "X25519") -> str:
        """A fresh key pair for the user (added to its keyring); returns the public key to register."""
        private, raw = new_key(suite)
        self.keyrings.setdefault(user_id, {})[kid_of(raw)] = private
        return b64url(raw)

    def url(self, user_id: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(f"/u/{user_id}")).rstrip("/")

    def events(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Opened payloads with their envelope, in arrival order, retries of the same txn counted once."""
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        for r in self.received:
            if r.txn_id in seen or (user_id is not None and r.user_id != user_id):
                continue
            seen.add(r.txn_id)
            out.extend(r.opened)
        return out

    async def start(self) -> None:
        # Accepts exactly the largest body the delivery docs promise a server, and no more.
        app = web.Application(client_max_size=MAX_TXN_BYTES)
        app.router.add_put("/u/{user_id}/ally/v1/transactions/{txn_id}", self._handle)
        # A request whose client gave up is over: its handler is cancelled, so `in_flight`
        # counts what the gateway really has open.
        self.server = TestServer(app, port=0, handler_cancellation=True)
        await self.server.start_server()

    async def close(self) -> None:
        self.closing.set()
        if self.server is not None:
            await self.server.close()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(loop(), timeout)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        user_id = request.match_info["user_id"]
        txn_id = request.match_info["txn_id"]
        mode = self.mode.get(user_id, "ok")
        self.attempts.append((user_id, txn_id))
        self.attempt_times.append((user_id, txn_id, asyncio.get_running_loop().time()))
        self.arrived.set()
        if self.in_flight.get(user_id, 0):
            self.overlaps.append((user_id, txn_id))
        self.in_flight[user_id] = self.in_flight.get(user_id, 0) + 1
        try:
            return await self._answer(request, user_id, txn_id, mode)
        finally:
            self.in_flight[user_id] -= 1

    async def _answer(self, request: web.Request, user_id: str, txn_id: str, mode: str) -> web.StreamResponse:
        raw = await request.read()
        self.bodies.setdefault(txn_id, set()).add(raw)
        if mode == "once":
            # Acknowledge this one transaction, then be down: a server that crashed right after.
            self.mode[user_id], mode = "down", "ok"
        if mode == "flap":
            # Every other attempt of this user fails, like a server that keeps restarting.
            mode = "error" if sum(1 for u, _ in self.attempts if u == user_id) % 2 else "ok"
        if mode == "slow":
            await asyncio.sleep(self.delay)
        if mode in ("error", "limited"):
            self.arrived.set()
            if mode == "limited":
                return web.json_response(
                    {"error": "busy"}, status=429, headers={"Retry-After": self.retry_after or "1"}
                )
            return web.json_response({"error": "boom"}, status=500)
        if mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), 3600)
            return web.Response(status=503)
        if mode == "down":
            self.arrived.set()
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return web.Response(status=503, headers=headers)
        headers = {k.lower(): v for k, v in request.headers.items()}
        last_error: Exception | None = None
        for secret in self.secrets.get(user_id, []):
            try:
                signing.verify(secret, raw, headers)
                break
            except Exception as exc:
                last_error = exc
        else:
            raise AssertionError(f"bad signature for {user_id}: {last_error}")
        body = orjson.loads(raw)
        assert body["txn_id"] == txn_id == headers["webhook-id"]
        keyring = self.keyrings[user_id]
        opened = [
            {
                **{k: v for k, v in e.items() if k != "sealed"},
                "payload": open_sealed(keyring[e["kid"]], user_id, e["id"], e["sealed"]),
            }
            for e in body["events"]
        ]
        self.received.append(Received(txn_id, headers, body, opened, user_id))
        self.arrived.set()
        return web.json_response({"ok": True})
