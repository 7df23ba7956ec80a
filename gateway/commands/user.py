"""`ally-gateway user create|show|link|export|rotate|delete`: the admin API for operators
without an HTTP client.

Every command prints JSON on stdout (what the admin API would answer) and exits 0;
a refused request prints `ally-gateway: <code>: <detail>` on stderr and exits 1.
This module only builds the parser; `gateway.commands.user_actions` does the work and is
imported when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from foundation.config import Settings
from foundation.errors import ApiError


def add(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "user", help="create, show, link, export, rotate the credentials of, or erase a user"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="register a user's dedicated server (or update it)")
    create.add_argument("user_id")
    create.add_argument("--server-url", required=True)
    create.add_argument(
        "--public-key",
        required=True,
        help="the server's public key (X25519 or ML-KEM-768+X25519), base64url; "
        "write --public-key=KEY when it starts with '-'",
    )
    for name, text in (
        ("show", "status: server health, queue, channels (or erasure progress)"),
        ("export", "everything the gateway holds about the user, as JSON"),
        ("link", "a one-use Telegram deep link for the user (15 minutes)"),
    ):
        actions.add_parser(name, help=text).add_argument("user_id")
    rotate = actions.add_parser("rotate", help="new server token and webhook secret (shown once)")
    rotate.add_argument("user_id")
    rotate.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="seconds the old token and secret stay valid (default 86400; 0 revokes them at once)",
    )
    delete = actions.add_parser("delete", help="erase the user: revoke, unsubscribe, delete every key")
    delete.add_argument("user_id")
    delete.add_argument(
        "--no-wait", action="store_true", help="return once recorded; a running gateway worker finishes it"
    )
    parser.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.commands import user_actions

    try:
        result, status = asyncio.run(user_actions.main(settings, args))
    except ApiError as exc:
        print(f"ally-gateway: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return status
