"""JSON read once and strictly: the gateway and Telegram must see the same value.

A JSON reader that keeps the last of two equal keys (orjson) and one that keeps the first
(Telegram's) read `{"chat_id": <theirs>, "chat_id": <mine>}` as two different chats, so a
repeated key anywhere is refused. NaN and Infinity are not JSON; numbers and strings that
the re-encoder cannot write (integers past 64 bits, lone surrogates) are refused here too, so
what was checked is exactly what is re-encoded and sent.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from foundation.errors import BadRequest

_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


class _Refused(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # The key is named only when it is a plain parameter-like word (never caller content).
            raise _Refused(f"the key {key!r} appears twice" if _NAME.fullmatch(key) else "a key appears twice")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: orjson would write it as null, not as what was checked
        raise _Refused("a number is out of range")
    return value


def loads(text: str | bytes, what: str, code: str = "invalid_parameter") -> Any:
    """The one parsed value of `text` (surrounding whitespace allowed), or 400 `invalid_parameter`."""
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float)
        orjson.dumps(value)
    except _Refused as exc:
        raise BadRequest(code, f"{what}: {exc}") from None
    except (ValueError, RecursionError, TypeError, orjson.JSONEncodeError):
        # UnicodeDecodeError is a ValueError; TypeError/JSONEncodeError: what orjson cannot write.
        raise BadRequest(code, f"{what} is not valid JSON") from None
    return value
