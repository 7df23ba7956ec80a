"""Configuration: read once from the environment into a frozen, validated value.

Every problem is reported as a `ConfigError` whose message names the variable,
so `ally-gateway` can stop with one readable line instead of a traceback.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from foundation.errors import ConfigError

_KID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MAX_WORKERS = 256
"""At most this many processes for one `ally-gateway serve` (`ALLY_WORKERS`, `--workers`)."""


@dataclass(frozen=True)
class MasterKey:
    kid: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    """ALLY_WORKERS: processes `ally-gateway serve` runs on the one port (`--workers` overrides)."""
    redis_url: str | None = None
    redis_cluster: bool = False
    ack_replicas: int | None = None
    """ALLY_ACK_REPLICAS; None (unset): 1 when the Redis in use has replicas, else 0."""
    ack_timeout_ms: int = 500
    aof_rewrite_interval: float = 600.0
    data_dir: Path = Path(".ally")
    public_url: str = "http://127.0.0.1:8080"
    admin_token: str | None = field(default=None, repr=False)
    master_keys: tuple[MasterKey, ...] = field(default=(), repr=False)
    key_prefix: str = "ally:"
    telegram_bot_token: str | None = field(default=None, repr=False)
    telegram_webhook_secret: str | None = field(default=None, repr=False)
    telegram_api_url: str = "https://api.telegram.org"
    telegram_mode: str = "webhook"
    telegram_poll_lease: float = 15.0
    google_client_id: str | None = None
    google_client_secret: str | None = field(default=None, repr=False)
    google_auth_uri: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_uri: str = "https://oauth2.googleapis.com/token"
    google_revoke_uri: str = "https://oauth2.googleapis.com/revoke"
    gmail_api_url: str = "https://gmail.googleapis.com/"
    gmail_pubsub_topic: str | None = None
    gmail_push_audience: str | None = None
    gmail_push_service_account: str | None = None
    google_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    microsoft_client_id: str | None = None
    microsoft_client_secret: str | None = field(default=None, repr=False)
    microsoft_authority: str = "https://login.microsoftonline.com/common"
    microsoft_oidc_authority: str | None = None
    graph_api_url: str = "https://graph.microsoft.com/v1.0"
    allowed_return_origins: tuple[str, ...] = ()
    hold_ttl: int = 604800
    offline_notice_after: float = 60.0
    """Seconds a user's server fails before a chat that writes is told it is offline; 0: never."""
    queue_max_events: int = 10000
    queue_max_bytes: int = 67108864
    metrics_token: str | None = field(default=None, repr=False)
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    ai_fallbacks: tuple[str, ...] = ()
    ai_monthly_tokens: int | None = None
    ai_attempts: int = 2
    ai_backoff: float = 0.5
    ai_timeout: float = 600.0
    ai_concurrency: int = 4
    ai_allowed_server_tools: tuple[str, ...] = ()
    ai_allowed_betas: tuple[str, ...] = ()
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    gemini_api_key: str | None = field(default=None, repr=False)
    gemini_base_url: str | None = None
    delivery_timeout: float = 10.0
    delivery_lease: float = 20.0
    log_level: str = "INFO"

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_bot_token)

    @property
    def google_enabled(self) -> bool:
        return bool(self.google_client_id and self.google_client_secret)

    @property
    def microsoft_enabled(self) -> bool:
        return bool(self.microsoft_client_id and self.microsoft_client_secret)

    @property
    def ai_enabled(self) -> bool:
        return bool(self.anthropic_api_key)

    @property
    def public_origin(self) -> str:
        return origin_of(self.public_url)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = environ

    def raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def whole(self, name: str, default: int | None, *, low: int = 0, high: int | None = None) -> int | None:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{name} must be {bound}, got {number}")
        return number

    def number(self, name: str, default: float, *, low: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if not number >= low:
            raise ConfigError(f"{name} must be at least {low}, got {value!r}")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")

    def url(self, name: str, default: str | None, *, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        parts = urlsplit(value)
        # unix:///path/to/redis.sock names a socket path and has no host.
        located = parts.netloc or (parts.scheme == "unix" and parts.path.startswith("/"))
        if parts.scheme not in schemes or not located:
            allowed = " or ".join(f"{s}://" for s in schemes)
            raise ConfigError(f"{name} must be an absolute {allowed} URL, got {value!r}")
        return value


def parse_master_keys(value: str, name: str = "ALLY_MASTER_KEYS") -> tuple[MasterKey, ...]:
    keys: list[MasterKey] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not _KID.match(kid):
            raise ConfigError(f"{name} must be kid:base64url(32 bytes)[,kid:...]; bad entry for kid {kid[:32]!r}")
        try:
            key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raise ConfigError(f"{name}: key {kid!r} is not base64url") from None
        if len(key) != 32:
            raise ConfigError(f"{name}: key {kid!r} must decode to 32 bytes, got {len(key)}")
        if any(k.kid == kid for k in keys):
            raise ConfigError(f"{name}: kid {kid!r} appears twice")
        keys.append(MasterKey(kid, key))
    if not keys:
        raise ConfigError(f"{name} is empty")
    return tuple(keys)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every `ALLY_*` setting; raise `ConfigError` naming the first bad one."""
    r = _Reader(os.environ if environ is None else environ)
    env = r.text("ALLY_ENV", "development")
    if env not in ("development", "production"):
        raise ConfigError(f"ALLY_ENV must be development or production, got {env!r}")
    production = env == "production"
    port = r.whole("PORT", 8080, low=0, high=65535)
    assert port is not None
    host = r.text("ALLY_HOST", "127.0.0.1") or "127.0.0.1"
    redis_url = r.url("ALLY_REDIS_URL", None, schemes=("redis", "rediss", "unix"))
    redis_cluster = r.flag("ALLY_REDIS_CLUSTER", False)
    if redis_cluster and redis_url is None:
        raise ConfigError("ALLY_REDIS_CLUSTER=true needs ALLY_REDIS_URL naming one node of the cluster")
    public_url = r.url("ALLY_PUBLIC_URL", f"http://127.0.0.1:{port}")
    assert public_url is not None
    public_url = public_url.rstrip("/")
    if production and urlsplit(public_url).scheme != "https":
        raise ConfigError("ALLY_PUBLIC_URL must be https:// when ALLY_ENV=production")

    admin_token = r.text("ALLY_ADMIN_TOKEN")
    if admin_token is not None and len(admin_token) < 16:
        raise ConfigError("ALLY_ADMIN_TOKEN must be at least 16 characters")
    if production and admin_token is None:
        raise ConfigError("ALLY_ADMIN_TOKEN is required when ALLY_ENV=production")
    keys_raw = r.text("ALLY_MASTER_KEYS")
    master_keys = parse_master_keys(keys_raw) if keys_raw is not None else ()
    if production and not master_keys:
        raise ConfigError("ALLY_MASTER_KEYS is required when ALLY_ENV=production")

    origins_raw = r.text("ALLY_ALLOWED_RETURN_ORIGINS")
    if origins_raw is None:
        origins: tuple[str, ...] = (origin_of(public_url),)
    else:
        checked = []
        for item in (o.strip() for o in origins_raw.split(",")):
            if not item:
                continue
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ConfigError(
                    f"ALLY_ALLOWED_RETURN_ORIGINS entries must be origins like https://app.example, got {item!r}"
                )
            checked.append(origin_of(item))
        origins = tuple(checked)

    fallbacks_raw = r.text("ALLY_AI_FALLBACKS")
    fallbacks = _words(fallbacks_raw)
    data_dir = Path(r.text("ALLY_DATA_DIR", ".ally") or ".ally")
    log_level = (r.text("ALLY_LOG_LEVEL", "INFO") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"ALLY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

    hold_ttl = r.whole("ALLY_HOLD_TTL", 604800, low=1)
    assert hold_ttl is not None
    key_prefix = r.text("ALLY_KEY_PREFIX", "ally:") or "ally:"
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,40}", key_prefix) or "{" in key_prefix:
        raise ConfigError("ALLY_KEY_PREFIX must be 1-40 characters of A-Za-z0-9_.:-")

    telegram_api_url = _url(r, "ALLY_TELEGRAM_API_URL", Settings.telegram_api_url).rstrip("/")
    telegram_mode = _telegram_mode(r, public_url, telegram_api_url)

    return Settings(
        env=env,
        host=host,
        port=port,
        workers=r.whole("ALLY_WORKERS", 1, low=1, high=MAX_WORKERS) or 1,
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        ack_replicas=r.whole("ALLY_ACK_REPLICAS", None, low=0, high=16),
        ack_timeout_ms=r.whole("ALLY_ACK_TIMEOUT_MS", 500, low=1, high=60_000) or 500,
        aof_rewrite_interval=r.number("ALLY_AOF_REWRITE_INTERVAL", 600.0, low=1.0),
        data_dir=data_dir,
        public_url=public_url,
        admin_token=admin_token,
        master_keys=master_keys,
        key_prefix=key_prefix,
        telegram_bot_token=_telegram_token(r.text("ALLY_TELEGRAM_BOT_TOKEN")),
        telegram_webhook_secret=_telegram_secret(r.text("ALLY_TELEGRAM_WEBHOOK_SECRET")),
        telegram_api_url=telegram_api_url,
        telegram_mode=telegram_mode,
        telegram_poll_lease=r.number("ALLY_TELEGRAM_POLL_LEASE", 15.0, low=1.0),
        google_client_id=r.text("ALLY_GOOGLE_CLIENT_ID"),
        google_client_secret=r.text("ALLY_GOOGLE_CLIENT_SECRET"),
        google_auth_uri=_url(r, "ALLY_GOOGLE_AUTH_URI", Settings.google_auth_uri),
        google_token_uri=_url(r, "ALLY_GOOGLE_TOKEN_URI", Settings.google_token_uri),
        google_revoke_uri=_url(r, "ALLY_GOOGLE_REVOKE_URI", Settings.google_revoke_uri),
        gmail_api_url=_url(r, "ALLY_GMAIL_API_URL", Settings.gmail_api_url),
        gmail_pubsub_topic=r.text("ALLY_GMAIL_PUBSUB_TOPIC"),
        gmail_push_audience=r.text("ALLY_GMAIL_PUSH_AUDIENCE"),
        gmail_push_service_account=r.text("ALLY_GMAIL_PUSH_SERVICE_ACCOUNT"),
        google_certs_url=_url(r, "ALLY_GOOGLE_CERTS_URL", Settings.google_certs_url),
        microsoft_client_id=r.text("ALLY_MICROSOFT_CLIENT_ID"),
        microsoft_client_secret=r.text("ALLY_MICROSOFT_CLIENT_SECRET"),
        microsoft_authority=_url(r, "ALLY_MICROSOFT_AUTHORITY", Settings.microsoft_authority, https=True),
        microsoft_oidc_authority=r.url("ALLY_MICROSOFT_OIDC_AUTHORITY", None, schemes=("https",)),
        graph_api_url=_url(r, "ALLY_GRAPH_API_URL", Settings.graph_api_url).rstrip("/"),
        allowed_return_origins=origins,
        hold_ttl=hold_ttl,
        offline_notice_after=_seconds(r, "ALLY_OFFLINE_NOTICE_AFTER", 60.0),
        queue_max_events=r.whole("ALLY_QUEUE_MAX_EVENTS", 10000, low=1) or 10000,
        queue_max_bytes=r.whole("ALLY_QUEUE_MAX_BYTES", 67108864, low=1024) or 67108864,
        metrics_token=r.text("ALLY_METRICS_TOKEN"),
        anthropic_api_key=r.text("ALLY_ANTHROPIC_API_KEY"),
        anthropic_base_url=r.url("ALLY_ANTHROPIC_BASE_URL", None),
        ai_fallbacks=fallbacks,
        ai_monthly_tokens=r.whole("ALLY_AI_MONTHLY_TOKENS", None, low=1),
        ai_attempts=r.whole("ALLY_AI_ATTEMPTS", 2, low=1, high=10) or 2,
        ai_backoff=r.number("ALLY_AI_BACKOFF", 0.5, low=0.0),
        ai_timeout=r.number("ALLY_AI_TIMEOUT", 600.0, low=0.1),
        ai_concurrency=r.whole("ALLY_AI_CONCURRENCY", 4, low=1, high=1000) or 4,
        ai_allowed_server_tools=_words(r.text("ALLY_AI_ALLOWED_SERVER_TOOLS")),
        ai_allowed_betas=_words(r.text("ALLY_AI_ALLOWED_BETAS")),
        openai_api_key=r.text("ALLY_OPENAI_API_KEY"),
        openai_base_url=r.url("ALLY_OPENAI_BASE_URL", None),
        gemini_api_key=r.text("ALLY_GEMINI_API_KEY"),
        gemini_base_url=r.url("ALLY_GEMINI_BASE_URL", None),
        delivery_timeout=r.number("ALLY_DELIVERY_TIMEOUT", 10.0, low=0.1),
        delivery_lease=r.number("ALLY_DELIVERY_LEASE", 20.0, low=1.0),
        log_level=log_level,
    )


def _url(r: _Reader, name: str, default: str, *, https: bool = False) -> str:
    value = r.url(name, default, schemes=("https",) if https else ("http", "https"))
    assert value is not None
    return value


def _seconds(r: _Reader, name: str, default: float) -> float:
    value = r.number(name, default, low=0.0)
    if value == float("inf"):
        raise ConfigError(f"{name} must be a finite number of seconds (0 turns it off)")
    return value


def _telegram_token(value: str | None) -> str | None:
    # BotFather's shape: the bot's numeric id, a colon, then the secret part.
    if value is not None and not re.fullmatch(r"\d{1,20}:[A-Za-z0-9_-]{20,}", value):
        raise ConfigError("ALLY_TELEGRAM_BOT_TOKEN must look like <bot id>:<secret>, as BotFather gives it")
    return value


def _telegram_secret(value: str | None) -> str | None:
    # Telegram accepts 1-256 characters of A-Z, a-z, 0-9, _ and - for secret_token.
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value):
        raise ConfigError("ALLY_TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Za-z0-9_-")
    return value


def _telegram_mode(r: _Reader, public_url: str, api_url: str) -> str:
    mode = (r.text("ALLY_TELEGRAM_MODE", "webhook") or "webhook").lower()
    if mode not in ("webhook", "polling"):
        raise ConfigError(f"ALLY_TELEGRAM_MODE must be webhook or polling, got {mode!r}")
    real_api = urlsplit(api_url).hostname == "api.telegram.org"
    if r.raw("ALLY_TELEGRAM_BOT_TOKEN") and mode == "webhook" and real_api and not public_url.startswith("https://"):
        # Telegram delivers webhooks to https only: this setup would never receive an update.
        raise ConfigError(
            f"ALLY_PUBLIC_URL ({public_url}) is not https, and Telegram sends webhooks only to https: "
            "set ALLY_TELEGRAM_MODE=polling (no public address needed), or give the gateway an https ALLY_PUBLIC_URL"
        )
    return mode


def _words(value: str | None) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(w.strip() for w in (value or "").split(",") if w.strip())
