"""`ally-gateway` as an operator runs it: each command imports only the parts it needs (no SDK
that takes seconds to import for a command that never calls it), warns about Gmail only when
Google is configured, and what it does is seen by the running gateway (a rotation, an erasure)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import Gateway, random_public_key
from tests.support.metrics import scrape, value
from tests.support.subprocess_gateway import ROOT, environment

pytestmark = pytest.mark.slow

# Runs the CLI's main() and records every module it imported, whatever way it ends.
RECORDER = """
import json, sys
from gateway.cli import main
try:
    status = main(sys.argv[2:])
except SystemExit as exc:
    status = exc.code
with open(sys.argv[1], "w") as out:
    json.dump(sorted(sys.modules), out)
sys.exit(status)
"""
SDKS = ("anthropic", "msal", "google_auth_oauthlib", "googleapiclient", "telegram")
GOOGLE = {"ALLY_GOOGLE_CLIENT_ID": "client.apps.example", "ALLY_GOOGLE_CLIENT_SECRET": "secret-0123456789"}


async def cli(gateway: Gateway, tmp_path: Path, *args: str, **env: str) -> tuple[int, Any, str, set[str]]:
    record = tmp_path / "modules.json"
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", RECORDER, str(record), *args],
        env=environment(gateway.settings, **env),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout.decode()
    document = json.loads(out) if out.strip().startswith("{") else out
    return proc.returncode, document, proc.stderr.decode(), set(json.loads(record.read_text()))


def imported(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


async def test_help_imports_no_part_of_the_gateway(gateway: Gateway, tmp_path: Path):
    status, out, _, modules = await cli(gateway, tmp_path, "user", "--help")
    assert status == 0 and "rotate" in out
    for heavy in (*SDKS, "aiohttp", "redis", "gateway.app", "channels", "oauth", "ai"):
        assert not imported(modules, heavy), heavy


@pytest.mark.parametrize("action", ["create", "rotate"])
async def test_create_and_rotate_start_the_core_alone(gateway: Gateway, tmp_path: Path, action: str):
    key = random_public_key()
    await cli(gateway, tmp_path, "user", "create", "lean", "--server-url", "https://srv.example", f"--public-key={key}")
    args = ["--server-url", "https://srv.example", f"--public-key={key}"] if action == "create" else []
    status, out, err, modules = await cli(gateway, tmp_path, "user", action, "lean", *args)
    assert status == 0, err
    assert out["user_id"] == "lean"
    assert imported(modules, "routing.registry")  # the control: the command did its work
    for heavy in (*SDKS, "channels", "ai"):
        assert not imported(modules, heavy), heavy


async def test_show_loads_every_channel_but_no_sdk_of_a_provider_that_is_off(gateway: Gateway, tmp_path: Path):
    await gateway.admin(
        "PUT",
        "/admin/v1/users/shown",
        json={"server_url": "https://srv.example", "server_public_key": random_public_key()},
    )
    status, out, err, modules = await cli(gateway, tmp_path, "user", "show", "shown")
    assert status == 0, err
    assert "ai" in out and "connections" in out  # every part's status is there
    for heavy in ("anthropic", "msal", "google_auth_oauthlib", "googleapiclient", "oauth.google", "oauth.microsoft"):
        assert not imported(modules, heavy), heavy
    assert "gmail" not in err.lower(), "no Gmail warning while Google is not configured"


async def test_the_gmail_warning_comes_only_when_google_is_configured(gateway: Gateway, tmp_path: Path):
    await gateway.admin(
        "PUT",
        "/admin/v1/users/warned",
        json={"server_url": "https://srv.example", "server_public_key": random_public_key()},
    )
    status, _, err, modules = await cli(gateway, tmp_path, "user", "show", "warned", **GOOGLE)
    assert status == 0, err
    assert "gmail pushes cannot be verified" in err
    assert imported(modules, "oauth.google")


async def test_user_rotate_overlap_zero_refuses_the_old_token_in_the_running_gateway(gateway: Gateway, tmp_path: Path):
    body = {"server_url": "https://srv.example", "server_public_key": random_public_key()}
    created = await (await gateway.admin("PUT", "/admin/v1/users/rotated", json=body)).json()
    status, rotated, err, _ = await cli(gateway, tmp_path, "user", "rotate", "rotated", "--overlap", "0")
    assert status == 0, err
    assert rotated["overlap"] == 0 and rotated["server_token"] != created["server_token"]
    old = await gateway.client.post("/v1/ping", headers={"Authorization": f"Bearer {created['server_token']}"})
    assert old.status == 401
    assert "rotated out" in (await old.json())["detail"]
    new = await gateway.client.post("/v1/ping", headers={"Authorization": f"Bearer {rotated['server_token']}"})
    assert new.status == 200

    status, _, err, _ = await cli(gateway, tmp_path, "user", "rotate", "rotated", "--overlap", "-5")
    assert status == 1 and "invalid_overlap" in err


async def test_an_erasure_run_from_the_cli_is_counted_by_the_running_gateway(gateway: Gateway, tmp_path: Path):
    body = {"server_url": "https://srv.example", "server_public_key": random_public_key()}
    assert (await gateway.admin("PUT", "/admin/v1/users/erased", json=body)).status == 201
    before = value(await scrape(gateway), 'ally_erasures_total{outcome="complete"}')
    status, out, err, _ = await cli(gateway, tmp_path, "user", "delete", "erased")
    assert status == 0, err
    assert out["status"] == "erased"
    assert value(await scrape(gateway), 'ally_erasures_total{outcome="complete"}') == before + 1
