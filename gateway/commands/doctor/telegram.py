"""The shared bot, asked directly: getMe and getWebhookInfo (Bot API)."""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp

from foundation.config import Settings
from foundation.logs import scrub
from gateway.commands.doctor.report import Report

TIMEOUT = aiohttp.ClientTimeout(total=10)
PENDING_WARN = 100
RECENT_ERROR = 3600.0
_BOT_ID = re.compile(r"^(\d{1,20}):")


async def _call(session: aiohttp.ClientSession, settings: Settings, method: str) -> dict[str, Any]:
    url = f"{settings.telegram_api_url}/bot{settings.telegram_bot_token}/{method}"
    async with session.get(url, timeout=TIMEOUT) as resp:
        body: dict[str, Any] = await resp.json(content_type=None)
    return body


async def check_telegram(settings: Settings, report: Report) -> None:
    if not settings.telegram_enabled:
        report.info("telegram", "off (ALLY_TELEGRAM_BOT_TOKEN unset)")
        return
    match = _BOT_ID.match(settings.telegram_bot_token or "")
    if match is None:
        report.fail("telegram", "ALLY_TELEGRAM_BOT_TOKEN does not look like <bot id>:<secret>")
        return
    expected = f"{settings.public_url}/telegram/webhook/{match.group(1)}"
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            me = await _call(session, settings, "getMe")
            if not me.get("ok"):
                report.fail("telegram", f"getMe refused: {me.get('error_code')} {scrub(str(me.get('description')))}")
                return
            report.ok("telegram", f"bot @{me['result'].get('username')} (id {me['result'].get('id')})")
            info = await _call(session, settings, "getWebhookInfo")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        # The URL holds the token: only the error's type and the API host are shown.
        report.fail("telegram", f"{settings.telegram_api_url} did not answer: {type(exc).__name__}")
        return
    if not info.get("ok"):
        report.fail("telegram", f"getWebhookInfo refused: {info.get('error_code')}")
        return
    if settings.telegram_mode == "polling":
        _polling(info["result"], report)
    else:
        _webhook(info["result"], expected, report)


def _polling(hook: dict[str, Any], report: Report) -> None:
    url = hook.get("url") or ""
    pending = int(hook.get("pending_update_count") or 0)
    if url:
        # Telegram answers getUpdates with 409 Conflict while any webhook is set.
        report.fail(
            "telegram",
            f"ALLY_TELEGRAM_MODE=polling, but a webhook is set ({scrub(url)}): getUpdates gets 409 Conflict. "
            "Another deployment in webhook mode uses this bot; stop it or switch it to polling too",
        )
        return
    report.ok("telegram", f"long polling (no webhook), {pending} update(s) waiting at Telegram")
    if pending > PENDING_WARN:
        report.warn("telegram", f"{pending} updates waiting at Telegram: is a gateway process running?")


def _webhook(hook: dict[str, Any], expected: str, report: Report) -> None:
    url = hook.get("url") or ""
    pending = int(hook.get("pending_update_count") or 0)
    if not url:
        report.fail("telegram", "no webhook set: updates wait at Telegram (serve sets it at start)")
    elif url != expected:
        report.fail("telegram", f"webhook points to {scrub(url)}, expected {expected}")
    else:
        report.ok("telegram", f"webhook {url}, {pending} update(s) pending")
    if pending > PENDING_WARN:
        report.warn("telegram", f"{pending} updates pending at Telegram: the webhook is not keeping up")
    last = hook.get("last_error_date")
    if last:
        age = time.time() - float(last)
        text = f"last webhook error {_ago(age)}: {scrub(str(hook.get('last_error_message') or ''))}"
        if age < RECENT_ERROR:
            report.fail("telegram", text)
        else:
            report.warn("telegram", text)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} s ago"
    if seconds < 7200:
        return f"{int(seconds // 60)} min ago"
    return f"{int(seconds // 3600)} h ago"
