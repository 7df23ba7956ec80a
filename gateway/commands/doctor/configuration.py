"""Configuration and provider settings: what can be judged without asking anyone."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from foundation.config import Settings, is_loopback_host
from gateway.commands.doctor.report import Report

_TOPIC = re.compile(r"^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/[A-Za-z][A-Za-z0-9._~%+-]{2,254}$")


def check_configuration(settings: Settings, report: Report, dev_secrets: list[str]) -> None:
    channels = [
        name
        for name, on in (
            ("telegram", settings.telegram_enabled),
            ("google", settings.google_enabled),
            ("microsoft", settings.microsoft_enabled),
            ("ai relay", settings.ai_enabled),
        )
        if on
    ]
    report.ok(
        "configuration",
        f"{settings.env}, public URL {settings.public_url}, enabled: {', '.join(channels) or 'nothing but the core'}",
    )
    if dev_secrets:
        report.info("configuration", f"development secrets from {settings.data_dir}: {', '.join(dev_secrets)}")
    public = urlsplit(settings.public_url)
    if not settings.production and (public.scheme != "https" or is_loopback_host(public.hostname)):
        report.warn(
            "configuration",
            "ALLY_PUBLIC_URL is not a public https URL: Telegram, Google and Microsoft cannot reach this gateway",
        )
    if settings.redis_url is None and settings.production:
        report.warn("configuration", "ALLY_REDIS_URL unset: the embedded Redis serves a single machine only")
    if len(settings.master_keys) > 1:
        report.info(
            "configuration", f"key ring of {len(settings.master_keys)}, active kid {settings.master_keys[0].kid}"
        )


def check_data_dir(settings: Settings, report: Report) -> None:
    """Where the embedded default keeps its state; a relative ALLY_DATA_DIR depends on where
    the command runs, so a doctor started elsewhere than the gateway says where it looked."""
    if settings.redis_url is not None:
        return
    where = settings.data_dir.absolute()
    if not settings.data_dir.is_dir():
        report.fail(
            "data dir",
            f"no data dir at {where} (ALLY_DATA_DIR={settings.data_dir}, relative to the working directory "
            f"{Path.cwd()}): run the doctor from the gateway's directory, with its environment",
        )
    elif not (settings.data_dir / "redis").exists():
        report.warn("data dir", f"{where} holds no embedded Redis yet: the gateway has not run with this data dir")
    else:
        report.ok("data dir", str(where))


def check_providers(settings: Settings, report: Report) -> None:
    _pair(report, "google", "ALLY_GOOGLE_CLIENT_ID", settings.google_client_id, settings.google_client_secret)
    _pair(
        report, "microsoft", "ALLY_MICROSOFT_CLIENT_ID", settings.microsoft_client_id, settings.microsoft_client_secret
    )
    if settings.google_enabled:
        _gmail(settings, report)
    if settings.microsoft_enabled:
        authority = settings.microsoft_oidc_authority or settings.microsoft_authority
        report.ok("microsoft", f"OAuth client {settings.microsoft_client_id}, authority {authority}")
    if settings.ai_enabled:
        report.ok("ai relay", f"Anthropic at {settings.anthropic_base_url or 'the default API URL'}")
        if settings.ai_monthly_tokens is None:
            report.info("ai relay", "no monthly token cap (ALLY_AI_MONTHLY_TOKENS unset)")
    insecure = [
        name
        for name, url in (
            ("ALLY_GOOGLE_TOKEN_URI", settings.google_token_uri),
            ("ALLY_GOOGLE_REVOKE_URI", settings.google_revoke_uri),
            ("ALLY_GMAIL_API_URL", settings.gmail_api_url),
            ("ALLY_GRAPH_API_URL", settings.graph_api_url),
            ("ALLY_TELEGRAM_API_URL", settings.telegram_api_url),
        )
        if urlsplit(url).scheme != "https"
    ]
    if insecure and settings.production:
        report.fail("providers", f"plain-http provider endpoints in production: {', '.join(insecure)}")
    elif insecure:
        report.info("providers", f"plain-http provider endpoints (local stand-ins?): {', '.join(insecure)}")


def _pair(report: Report, area: str, name: str, client_id: str | None, secret: str | None) -> None:
    if bool(client_id) != bool(secret):
        missing = name.replace("_ID", "_SECRET") if client_id else name
        report.fail(area, f"{missing} is unset while its partner is set: the provider stays off")


def _gmail(settings: Settings, report: Report) -> None:
    report.ok("google", f"OAuth client {settings.google_client_id}")
    topic = settings.gmail_pubsub_topic
    if topic is None:
        report.warn("gmail", "ALLY_GMAIL_PUBSUB_TOPIC unset: no users.watch, so no Gmail notifications")
        return
    if not _TOPIC.match(topic):
        report.fail("gmail", f"ALLY_GMAIL_PUBSUB_TOPIC must be projects/<project>/topics/<topic>, got {topic!r}")
    missing = [
        name
        for name, value in (
            ("ALLY_GMAIL_PUSH_AUDIENCE", settings.gmail_push_audience),
            ("ALLY_GMAIL_PUSH_SERVICE_ACCOUNT", settings.gmail_push_service_account),
        )
        if not value
    ]
    if missing:
        report.fail("gmail", f"{', '.join(missing)} unset: every Pub/Sub push would be refused (401)")
    else:
        report.ok("gmail", f"push to topic {topic}, verified for audience {settings.gmail_push_audience}")
