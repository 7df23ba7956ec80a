"""Structured logs: one JSON object per line, scrubbed by shape.

The scrubber does not rely on knowing the secrets: anything shaped like a bearer
header, a JWT, a Telegram bot token, a webhook secret, an API key, an email
address or a long opaque token is replaced, in the message, in every extra
field and in exception text. Message content is never passed to a logger in the
first place; the scrubber is the second line of defence.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import re
import sys
import traceback
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*)?"), "[jwt]"),
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}"), "[bot-token]"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "[webhook-secret]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[api-key]"),
    (re.compile(r"\bast\.[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]+"), "[server-token]"),
    (re.compile(r"\b(?:ya29|1//)[A-Za-z0-9._-]{8,}"), "[oauth-token]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[email]"),
    (
        re.compile(
            r"(?i)((?:access|refresh|id)_token|client_secret|code|password|secret|token|key)"
            r"([\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
        ),
        r"\1\2[redacted]",
    ),
    (re.compile(r"[A-Za-z0-9_-]{32,}"), "[opaque]"),
    (re.compile(r"[A-Za-z0-9+/]{40,}={0,2}"), "[opaque]"),
)

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def scrub(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _clean(value)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, _tb = record.exc_info
            entry["error"] = {
                "type": exc_type.__name__,
                "message": scrub(str(exc)),
                "where": [
                    f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                    for f in traceback.extract_tb(exc.__traceback__ if exc else None)
                ][-6:],
            }
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library loggers can echo request URLs or bodies at debug level; keep them quiet.
    for noisy in ("aiohttp.access", "urllib3", "googleapiclient", "msal", "httpx", "httpcore", "telegram", "anthropic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
