"""Requests and credentials for the AI relay's tests."""

from __future__ import annotations

from tests.support.gateway import Gateway, random_public_key

PRIMARY = "claude-sonnet-5-5"
FALLBACK = "claude-haiku-5-5"


async def server_token(gateway: Gateway, user_id: str = "alice") -> dict[str, str]:
    resp = await gateway.admin(
        "PUT",
        f"/admin/v1/users/{user_id}",
        json={"server_url": "http://127.0.0.1:9/ally", "server_public_key": random_public_key()},
    )
    assert resp.status == 201, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['server_token']}"}


def ask(
    text: str = "Hello, Claude", *, model: str = PRIMARY, stream: bool = False, **extra: object
) -> dict[str, object]:
    return {
        "model": model,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        **extra,
    }
