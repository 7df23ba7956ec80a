"""Runs tests/support/oidc/server.mjs (oidc-provider, a certified OpenID Connect server) with node.

The npm dependencies are installed from the committed lock file the first time they are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.tlsca import Pki

HERE = Path(__file__).resolve().parent / "oidc"


def ensure_installed() -> None:
    marker = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed for the OAuth tests (Debian: apt-get install nodejs npm)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True, timeout=300)


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uri: str

    def registration(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": [self.redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_post",
        }


@dataclass
class AuthServer:
    process: asyncio.subprocess.Process
    port: int
    ssl: Any

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}/oidc"

    async def control(self, name: str, **body: Any) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"https://127.0.0.1:{self.port}/test/{name}", json=body, ssl=self.ssl) as resp,
        ):
            answer: dict[str, Any] = await resp.json()
            return answer

    async def counts(self) -> dict[str, int]:
        return dict((await self.control("counts"))["counts"])

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


async def start(
    workdir: Path,
    pki: Pki,
    clients: list[Client],
    resources: dict[str, dict[str, Any]],
    ssl: Any,
    *,
    access_token_ttl: int = 3600,
) -> AuthServer:
    await asyncio.to_thread(ensure_installed)
    config = {
        "key": str(pki.key_file),
        "cert": str(pki.cert_file),
        "clients": [c.registration() for c in clients],
        "resources": resources,
        "accessTokenTtl": access_token_ttl,
    }
    path = workdir / "oidc-config.json"
    path.write_text(json.dumps(config))
    process = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(HERE / "server.mjs"),
        str(path),
        cwd=HERE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    if not line.startswith(b"listening "):
        process.kill()
        raise RuntimeError(f"authorization server did not start: {line!r}")
    return AuthServer(process, int(line.split()[1]), ssl)
