"""The answers shown in docs/ have the shape of the gateway's real answers: same members,
same value kinds, and the example secrets are shaped like real ones."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway

DOCS = Path(__file__).resolve().parent.parent / "docs"


def json_blocks(page: str) -> list[Any]:
    text = (DOCS / page).read_text()
    out: list[Any] = []
    for block in re.findall(r"```json\n(.*?)```", text, flags=re.S):
        try:
            out.append(json.loads(block))
        except json.JSONDecodeError:
            continue  # a block with an elision (…) is prose, not an example to compare
    return out


def documented(page: str, *members: str) -> dict[str, Any]:
    found = [b for b in json_blocks(page) if isinstance(b, dict) and all(m in b for m in members)]
    assert found, f"no example with {members} in docs/{page}"
    example: dict[str, Any] = found[0]
    return example


def shape(value: Any) -> Any:
    """Members and value kinds, recursively; null stands for "any kind" (optional values)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None:
        return None
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def same_shape(doc: Any, real: Any, path: str = "$") -> list[str]:
    doc_shape, real_shape = shape(doc), shape(real)
    return _compare(doc_shape, real_shape, path)


def _compare(doc: Any, real: Any, path: str) -> list[str]:
    if doc is None or real is None:
        return []
    if isinstance(real, dict) and not real:
        return []  # a map with no entries yet (connections, models): nothing to compare
    if isinstance(doc, dict) and isinstance(real, dict):
        problems = [f"{path}.{k}: documented, not answered" for k in doc.keys() - real.keys()]
        problems += [f"{path}.{k}: answered, not documented" for k in real.keys() - doc.keys()]
        for k in doc.keys() & real.keys():
            problems += _compare(doc[k], real[k], f"{path}.{k}")
        return problems
    if isinstance(doc, list) and isinstance(real, list):
        return _compare(doc[0], real[0], f"{path}[0]") if doc and real else []
    return [] if doc == real else [f"{path}: documented {doc}, answered {real}"]


def test_documented_webhook_secret_is_shaped_like_a_real_one():
    secret = documented("admin-api.md", "webhook_secret", "server_token")["webhook_secret"]
    assert secret.startswith("whsec_")
    raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    assert len(raw) == 32


async def test_documented_user_status_has_the_members_of_a_real_status(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "alice")
    resp = await gateway.admin("GET", "/admin/v1/users/alice")
    assert resp.status == 200
    real = await resp.json()
    example = documented("admin-api.md", "server", "queue", "counters")
    # The Telegram member is there only when the channel is on; this gateway runs without it.
    assert "telegram" in example
    del example["telegram"]
    assert same_shape(example, real) == []


ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def timestamps(value: Any, path: str = "$") -> list[tuple[str, Any]]:
    """Every member named like a point in time (`…_at`, `…_until`), with its value."""
    if isinstance(value, dict):
        found = [(f"{path}.{k}", v) for k, v in value.items() if k.endswith(("_at", "_until")) and v is not None]
        for k, v in value.items():
            found += timestamps(v, f"{path}.{k}")
        return found
    if isinstance(value, list):
        return [t for i, v in enumerate(value) for t in timestamps(v, f"{path}[{i}]")]
    return []


async def test_every_timestamp_answered_has_milliseconds_and_z(gateway: Gateway, dedicated: DedicatedServer):
    await gateway.create_user(dedicated, "tess")
    answers = []
    for method, path in (
        ("GET", "/admin/v1/users/tess"),
        ("GET", "/admin/v1/users/tess/export"),
        ("POST", "/admin/v1/users/tess/credentials/rotate"),
    ):
        resp = await gateway.admin(method, path)
        assert resp.status == 200, await resp.text()
        answers.append(await resp.json())
    found = [t for answer in answers for t in timestamps(answer)]
    assert {"$.created_at", "$.ai.resets_at", "$.previous_valid_until"} <= {p for p, _ in found}
    assert [(p, v) for p, v in found if not (isinstance(v, str) and ISO_MS.match(v))] == []
