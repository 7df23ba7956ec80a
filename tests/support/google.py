"""Google for tests: the Gmail API's watch/stop/getProfile, the OAuth token and revocation
endpoints as far as refreshing and revoking go, the signing-certificate endpoint (PEM x509 by key
id, like https://www.googleapis.com/oauth2/v1/certs) and Pub/Sub's push side (OIDC JWTs signed
with a test RSA key, push bodies in Pub/Sub's wire format)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

PUSH_AUDIENCE = "https://gateway.example/gmail/push"
PUSH_ACCOUNT = "gmail-push@ally-test.iam.gserviceaccount.com"
TOPIC = "projects/ally-test/topics/gmail"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class SigningKey:
    kid: str
    key: rsa.RSAPrivateKey
    cert_pem: str

    @classmethod
    def generate(cls) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.system.gserviceaccount.com")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .sign(key, hashes.SHA256())
        )
        return cls(os.urandom(20).hex(), key, cert.public_bytes(serialization.Encoding.PEM).decode())

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        header = {"alg": "RS256", "kid": kid or self.kid, "typ": "JWT"}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


@dataclass
class Mailbox:
    address: str
    history_id: int = 4000
    watch: dict[str, Any] | None = None


@dataclass
class Google:
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate()])
    tokens: dict[str, str] = field(default_factory=dict)
    """access token -> address of the mailbox it opens"""
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    """refresh token -> address; a refresh token removed from here is a dead grant"""
    refreshes: int = 0
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(method name, address) for every Gmail API call that was authorized"""
    cert_fetches: int = 0
    fail_watch: int | None = None
    watch_ttl_ms: int = 7 * 24 * 3600 * 1000
    server: TestServer | None = None

    # --- set-up --------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/oauth2/v1/certs", self._certs)
        app.router.add_post("/token", self._token)
        app.router.add_post("/revoke", self._revoke)
        app.router.add_post("/gmail/v1/users/{user}/watch", self._watch)
        app.router.add_post("/gmail/v1/users/{user}/stop", self._stop)
        app.router.add_get("/gmail/v1/users/{user}/profile", self._profile)
        self.server = TestServer(app, port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def url(self, path: str = "/") -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    @property
    def certs_url(self) -> str:
        return self.url("/oauth2/v1/certs")

    def mailbox(self, address: str) -> str:
        """Creates the mailbox and returns a fresh access token for it."""
        self.mailboxes.setdefault(address, Mailbox(address))
        token = "ya29." + _b64url(os.urandom(24))
        self.tokens[token] = address
        return token

    @property
    def token_url(self) -> str:
        return self.url("/token")

    @property
    def revoke_url(self) -> str:
        return self.url("/revoke")

    def refresh_token(self, address: str) -> str:
        token = "1//0g" + _b64url(os.urandom(30))
        self.refresh_tokens[token] = address
        return token

    def revoke_all(self, address: str) -> None:
        """The user removes the app's access in their Google account."""
        for table in (self.tokens, self.refresh_tokens):
            for token in [t for t, a in table.items() if a == address]:
                del table[token]

    def count(self, method: str, address: str | None = None) -> int:
        return sum(1 for m, a in self.calls if m == method and (address is None or a == address))

    # --- Pub/Sub side --------------------------------------------------------------------------

    def push_token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": PUSH_AUDIENCE,
            "azp": "113774264463038321964",
            "email": PUSH_ACCOUNT,
            "email_verified": True,
            "exp": now + 3600,
            "iat": now,
            "iss": "https://accounts.google.com",
            "sub": "113774264463038321964",
        }
        kid: str | None = overrides.pop("kid", None)
        key: SigningKey = overrides.pop("key", self.keys[0])
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return key.sign(claims, kid=kid)

    def change(self, address: str) -> int:
        """Something happened in the mailbox: its historyId moves on."""
        box = self.mailboxes[address]
        box.history_id += 17
        return box.history_id

    @staticmethod
    def push_body(address: str, history_id: int | str, message_id: str | None = None) -> dict[str, Any]:
        data = json.dumps({"emailAddress": address, "historyId": history_id}).encode()
        mid = message_id or str(int.from_bytes(os.urandom(6), "big"))
        published = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "message": {
                "data": base64.b64encode(data).decode(),
                "messageId": mid,
                "message_id": mid,
                "publishTime": published,
                "publish_time": published,
            },
            "subscription": "projects/ally-test/subscriptions/gmail-push",
        }

    # --- Gmail API -----------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        address = self.tokens.get(header.removeprefix("Bearer ").strip())
        if address is None or request.match_info["user"] not in ("me", address):
            raise web.HTTPUnauthorized(
                text=json.dumps(
                    {
                        "error": {
                            "code": 401,
                            "message": "Request had invalid authentication credentials.",
                            "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError"}],
                            "status": "UNAUTHENTICATED",
                        }
                    }
                ),
                content_type="application/json",
            )
        return address

    async def _certs(self, request: web.Request) -> web.Response:
        self.cert_fetches += 1
        body = {k.kid: k.cert_pem for k in self.keys}
        return web.json_response(
            body, headers={"Cache-Control": "public, max-age=19204, must-revalidate, no-transform"}
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.refreshes += 1
        address = self.refresh_tokens.get(str(form.get("refresh_token", "")))
        if form.get("grant_type") != "refresh_token" or address is None:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, status=400
            )
        return web.json_response(
            {
                "access_token": self.mailbox(address),
                "expires_in": 3599,
                "scope": "https://www.googleapis.com/auth/gmail.readonly",
                "token_type": "Bearer",
            }
        )

    async def _revoke(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))
        address = self.refresh_tokens.get(token) or self.tokens.get(token)
        if address is None:
            return web.json_response({"error": "invalid_token", "error_description": "Bad Request"}, status=400)
        self.revoke_all(address)
        return web.json_response({})

    async def _watch(self, request: web.Request) -> web.Response:
        address = self._authorize(request)
        body = await request.json()
        self.calls.append(("watch", address))
        if self.fail_watch is not None:
            return web.json_response(
                {"error": {"code": self.fail_watch, "message": "Backend Error", "status": "UNAVAILABLE"}},
                status=self.fail_watch,
            )
        if body.get("topicName") != TOPIC or body.get("labelIds") != ["INBOX"]:
            return web.json_response(
                {"error": {"code": 400, "message": "Invalid topicName", "status": "INVALID_ARGUMENT"}}, status=400
            )
        box = self.mailboxes[address]
        box.watch = {"topic": body["topicName"], "expiration": int(time.time() * 1000) + self.watch_ttl_ms}
        return web.json_response({"historyId": str(box.history_id), "expiration": str(box.watch["expiration"])})

    async def _stop(self, request: web.Request) -> web.Response:
        address = self._authorize(request)
        self.calls.append(("stop", address))
        self.mailboxes[address].watch = None
        return web.Response(status=204)

    async def _profile(self, request: web.Request) -> web.Response:
        address = self._authorize(request)
        self.calls.append(("getProfile", address))
        box = self.mailboxes[address]
        return web.json_response(
            {"emailAddress": address, "messagesTotal": 12, "threadsTotal": 9, "historyId": str(box.history_id)}
        )
