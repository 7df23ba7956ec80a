"""What every answer to hostile input must look like, whatever the endpoint."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

# Marks of an internal failure leaking out: a traceback, a source path, a library's own words.
_INTERNALS = re.compile(
    rb"Traceback \(most recent call last\)|File \"[^\"]+\.py\"|site-packages|/work/|\.py\", line"
    rb"|\b(?:Redis|Connection|Key|Type|Attribute|Value|Assertion|Index|Unicode\w*)Error[:(]"
)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


async def read(resp: aiohttp.ClientResponse) -> Answer:
    body = await resp.read()
    return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)


def assert_sane(answer: Answer, secrets: Iterable[bytes], *, allowed_5xx: Iterable[int] = ()) -> None:
    """No 5xx (except those the contract documents for a sick provider), nothing internal, no secret."""
    assert answer.status < 500 or answer.status in set(allowed_5xx), (answer.status, answer.body[:500])
    found = _INTERNALS.search(answer.body)
    assert found is None, f"internal detail in the answer: {found.group(0)!r} in {answer.body[:500]!r}"
    for secret in secrets:
        assert secret not in answer.body, "a secret appears in the answer"
        assert all(secret not in v.encode("utf-8", "replace") for v in answer.headers.values()), "secret in a header"


def assert_error_json(answer: Answer) -> str:
    """A gateway refusal: JSON `{"error": "<code>", "detail": "..."}`; returns the code."""
    assert answer.content_type == "application/json", (answer.status, answer.headers, answer.body[:300])
    body = answer.json
    assert isinstance(body, dict), body
    code = body.get("error")
    assert isinstance(code, str) and re.fullmatch(r"[a-z][a-z0-9_]*", code), body
    assert isinstance(body.get("detail", ""), str)
    return code
