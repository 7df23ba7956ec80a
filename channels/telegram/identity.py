"""Who the shared bot is: its id (from the token) and the webhook secrets it accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field

from foundation.config import Settings
from foundation.errors import ConfigError

_TOKEN = re.compile(r"^(\d{1,20}):[A-Za-z0-9_-]{20,}$")
_CONTEXT = b"ally-gateway/v1|telegram-webhook-secret|"


@dataclass(frozen=True)
class Identity:
    bot_id: str
    token: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    """The secret handed to setWebhook."""
    accepted: tuple[str, ...] = field(repr=False)
    """Every secret the webhook accepts: the configured one, or one derived per master key (rotation)."""

    def secret_ok(self, offered: str | None) -> bool:
        # Telegram's secrets are A-Za-z0-9_-; a header with other bytes (even ones that are not
        # UTF-8, which arrive as lone surrogates and cannot be encoded) is simply wrong.
        if not offered or not offered.isascii():
            return False
        # Every candidate is compared, so timing does not say which one (or whether any) matched.
        matched = False
        for secret in self.accepted:
            matched |= hmac.compare_digest(offered.encode(), secret.encode())
        return matched


def derive_secret(master_key: bytes, bot_id: str) -> str:
    """43 characters of A-Za-z0-9_- (Telegram allows 1-256 of those)."""
    digest = hmac.new(master_key, _CONTEXT + bot_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def identity_of(settings: Settings) -> Identity:
    token = settings.telegram_bot_token or ""
    match = _TOKEN.match(token)
    if match is None:
        raise ConfigError("ALLY_TELEGRAM_BOT_TOKEN must look like <bot id>:<secret> as BotFather gives it")
    bot_id = match.group(1)
    if settings.telegram_webhook_secret:
        secret = settings.telegram_webhook_secret
        return Identity(bot_id, token, secret, (secret,))
    if not settings.master_keys:
        raise ConfigError("ALLY_TELEGRAM_WEBHOOK_SECRET is unset and there is no master key to derive it from")
    derived = tuple(derive_secret(k.key, bot_id) for k in settings.master_keys)
    return Identity(bot_id, token, derived[0], derived)
