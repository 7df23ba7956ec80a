"""Structured logs: one JSON object per line, scrubbed by shape.

The scrubber does not rely on knowing the secrets: anything shaped like a bearer
header, a JWT, a Telegram bot token, a webhook secret, an API key, an OAuth
token, an email address, a `name=value` pair whose name says secret or message
content, or a long random-looking string is replaced — in the message, in every
extra field and in exception text (provider error bodies arrive that way).
Message content is never passed to a logger in the first place; the scrubber is
the second line of defence.

Every line carries a `request_id`: the HTTP request's (also answered as
`X-Request-Id`), or the id of the unit of background work that wrote it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from foundation.clock import iso
from foundation.randomness import hex_token

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Names whose value is a secret or message content wherever they appear as `name=value`,
# `name: value` or `"name": "value"` (query strings, form bodies, JSON, Python reprs).
_SECRET_NAMES = (
    r"(?:access|refresh|id|bot|secret|session|csrf|validation)_?token|token|client_?secret|secret|password|passwd"
    r"|api_?key|x-api-key|client_?state|code_verifier|assertion|signature|cookie|set-cookie|authorization"
)
_CONTENT_NAMES = (
    r"text|caption|subject|snippet|body_?preview|content|first_name|last_name|username|file_name|phone_number"
)

_UUID = re.compile(r"(?:[A-Za-z0-9]+[_-])?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_HEX = re.compile(r"[0-9a-fA-F]+")


def _random_looking(run: str) -> bool:
    """True for strings that look like key material rather than words, ids or paths."""
    if _UUID.fullmatch(run):
        return False
    bare = run.replace("-", "").replace("_", "")
    if len(bare) >= 32 and _HEX.fullmatch(bare):
        return True  # hex secrets and digests
    has = (any(c.isdigit() for c in run), any(c.islower() for c in run), any(c.isupper() for c in run))
    return all(has)


def _opaque(match: re.Match[str]) -> str:
    run = match.group(0)
    return "[opaque]" if _random_looking(run) else run


def _opaque_b64(match: re.Match[str]) -> str:
    run = match.group(0)
    # A path has a slash every few characters; random base64 has one in 64.
    if run.count("/") * 12 > len(run) or not _random_looking(run):
        return run
    return "[opaque]"


_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*)?"), "[jwt]"),
    # Also inside Bot API URLs (`/bot123456:AA.../getMe`), where no word boundary precedes the id.
    (re.compile(r"(?<![0-9])\d{5,}:[A-Za-z0-9_-]{30,}"), "[bot-token]"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "[webhook-secret]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[api-key]"),
    (re.compile(r"\bast\.[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]+"), "[server-token]"),
    (re.compile(r"(?<![A-Za-z0-9])(?:ya29\.|1//)[A-Za-z0-9._/-]{8,}"), "[oauth-token]"),
    (re.compile(r"(?<![A-Za-z0-9])4/0[A-Za-z0-9_-]{10,}"), "[oauth-code]"),
    (re.compile(r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[email]"),
    # `"name": "value"` / `'name': 'value'` with a quoted value, escapes included (JSON, reprs).
    (
        re.compile(
            rf"(?i)([\"']?(?:{_SECRET_NAMES}|{_CONTENT_NAMES})[\"']?\s*[:=]\s*)(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
        ),
        lambda m: f"{m.group(1)}{m.group(2)[0]}[redacted]{m.group(2)[0]}",
    ),
    # `name=value` in query strings, form bodies and headers; numeric values (error codes) stay.
    (
        re.compile(rf"(?i)(\b(?:{_SECRET_NAMES}|{_CONTENT_NAMES})\s*[:=]\s*)(?!\[)(?!\d+\b)[^\s\"'&,;}}\]]+"),
        r"\1[redacted]",
    ),
    (re.compile(r"[A-Za-z0-9_-]{32,}"), _opaque),
    (re.compile(r"[A-Za-z0-9+/]{40,}={0,2}"), _opaque_b64),
)

# Extra fields whose whole value is withheld, whatever its shape.
_WITHHELD = re.compile(rf"(?i)^(?:{_SECRET_NAMES}|{_CONTENT_NAMES}|email|email_address|payload|plaintext)$")

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "request_id"}


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
        return {str(k): "[redacted]" if _WITHHELD.match(str(k)) else _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return f"[{len(value)} bytes]"
    return scrub(str(value))


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}_{hex_token(8)}"


def accept_request_id(offered: str | None) -> str:
    """The caller's `X-Request-Id` when it is a harmless id, otherwise a fresh one."""
    if (
        offered
        and 0 < len(offered) <= 64
        and offered.replace("-", "").replace("_", "").isalnum()
        and offered.isascii()
        and scrub(offered) == offered
    ):
        return offered
    return new_request_id()


@contextlib.contextmanager
def bound_request_id(value: str) -> Iterator[str]:
    """Run a block (and every task it starts) under `value` as the request id."""
    token = request_id.set(value)
    try:
        yield value
    finally:
        request_id.reset(token)


def _exception(exc_type: type[BaseException], exc: BaseException | None) -> dict[str, Any]:
    chain: list[str] = []
    cause = exc.__cause__ or exc.__context__ if exc is not None else None
    while cause is not None and len(chain) < 3:
        chain.append(f"{type(cause).__name__}: {scrub(str(cause))}")
        cause = cause.__cause__ or cause.__context__
    error: dict[str, Any] = {
        "type": exc_type.__name__,
        "message": scrub(str(exc)),
        "where": [
            f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
            for f in traceback.extract_tb(exc.__traceback__ if exc else None)
        ][-6:],
    }
    if chain:
        error["caused_by"] = chain
    return error


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or _process_id,
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_") or key in entry:
                continue
            entry[key] = "[redacted]" if _WITHHELD.match(key) else _clean(value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = _exception(record.exc_info[0], record.exc_info[1])
        return orjson.dumps(entry, default=str).decode()


# Lines written outside any request or unit of work (start-up, shut-down) share the process's id.
_process_id = new_request_id("proc")


def _new_process_id() -> None:
    global _process_id
    _process_id = new_request_id("proc")


# A forked process (`serve --workers N`) is a process of its own in the logs too.
os.register_at_fork(after_in_child=_new_process_id)


def _stamping_factory(base: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.request_id = request_id.get()
        return record

    factory.stamps_request_id = True  # type: ignore[attr-defined]
    return factory


# The id is taken when the record is made, in the caller's context: a handler may format it
# later, elsewhere (buffering handlers, test capture), when that context is gone.
if not getattr(logging.getLogRecordFactory(), "stamps_request_id", False):
    logging.setLogRecordFactory(_stamping_factory(logging.getLogRecordFactory()))


def configure(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library loggers can echo request URLs or bodies at debug level; keep them quiet.
    for noisy in ("aiohttp.access", "urllib3", "googleapiclient", "msal", "httpx", "httpcore", "telegram", "anthropic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # The AI SDKs' own HTTP stack, and the fallback providers' SDKs: request logs could carry prompts.
    for noisy in ("httpx2", "httpcore2", "openai", "google_genai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
