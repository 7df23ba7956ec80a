"""The composition root: every plugin's routes, hooks and loops are collected and frozen before
anything starts, so the order the plugins are listed in changes nothing, and nothing can change
them once the app runs."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from foundation.config import Settings
from gateway import app as root
from oauth.broker import BROKER
from routing.hooks import Hooks
from routing.plugin import Plugin
from routing.services import SERVICES
from tests.support.gateway import every_channel_on, make_settings, wipe

KINDS = [kind.name for kind in dataclasses.fields(Hooks)]


@asynccontextmanager
async def started(
    settings: Settings, plugins: Sequence[str], *, extra: Sequence[Plugin] = ()
) -> AsyncIterator[web.Application]:
    """The app built with `PLUGINS` in the given order, started as an operator command starts it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(root, "PLUGINS", tuple(plugins))
        app = root.create_app(settings, root.OPERATOR, extra=extra)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()
        await wipe(settings.key_prefix)


def shape(app: web.Application) -> dict[str, Any]:
    """Everything the plugins contributed, in the order the app holds it."""
    services, broker = app[SERVICES], app[BROKER]
    routes = [
        (r.method, r.resource.canonical if r.resource else "", r.handler.__qualname__) for r in app.router.routes()
    ]
    return {
        "routes": routes,
        "hooks": {kind: list(getattr(services.hooks, kind)) for kind in KINDS},
        "loops": list(services.loops),
        "broker": (broker.on_connected, broker.on_disconnect),
        "app keys": sorted(repr(key) for key in app),
    }


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return every_channel_on(make_settings(tmp_path))


ORDERS = {
    "reversed": tuple(reversed(root.PLUGINS)),
    "shuffled": tuple(random.Random(7).sample(root.PLUGINS, len(root.PLUGINS))),
}


@pytest.mark.parametrize("order", ORDERS)
async def test_the_order_of_the_plugins_changes_no_route_hook_or_loop(settings: Settings, order: str):
    assert ORDERS[order] != root.PLUGINS
    async with started(settings, root.PLUGINS) as app:
        listed = shape(app)
        services = app[SERVICES]
        # The broker tells exactly the connection hooks the services hold, in that order.
        assert listed["broker"] == (
            tuple(services.hooks.connected.values()),
            tuple(services.hooks.disconnected.values()),
        )
    async with started(settings, ORDERS[order]) as app:
        reordered = shape(app)
    listed.pop("broker"), reordered.pop("broker")
    assert reordered == listed
    # The control: every plugin contributed, so the comparison covers them all.
    assert listed["hooks"]["erase"] == ["gmail", "oauth", "outlook", "telegram"]
    assert listed["hooks"]["status"] == ["ai", "connections", "gmail", "outlook", "telegram"]
    assert listed["hooks"]["connected"] == listed["hooks"]["disconnected"] == ["gmail", "outlook"]
    assert listed["hooks"]["link"] == listed["hooks"]["expired"] == ["telegram"]
    assert listed["loops"] == ["erasure", "gmail-watch", "oauth-revocations", "outlook-subscription"]
    assert {("POST", "/telegram/webhook/{bot_id}"), ("POST", "/gmail/push"), ("POST", "/v1/ai/messages")} <= {
        (method, path) for method, path, _ in listed["routes"]
    }


async def test_hooks_and_loops_cannot_be_changed_once_the_app_runs(settings: Settings):
    async def late(_user_id: str) -> None:
        raise AssertionError("a hook added after start-up ran")

    async with started(settings, root.PLUGINS) as app:
        services, broker = app[SERVICES], app[BROKER]
        with pytest.raises(TypeError):
            services.hooks.erase["late"] = late  # type: ignore[index]
        with pytest.raises(TypeError):
            services.loops["late"] = lambda: late("")  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            services.hooks.erase = {"late": late}  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            services.hooks = Hooks(erase={"late": late})  # type: ignore[misc]
        with pytest.raises(AttributeError):
            broker.on_disconnect.append(late)  # type: ignore[attr-defined]
        assert "late" not in services.hooks.erase


async def test_a_hook_or_loop_name_two_plugins_give_is_refused_before_anything_starts(settings: Settings):
    async def erase(_user_id: str) -> None:
        return None

    async def loop() -> None:
        return None

    for clash in (
        Plugin(name="clash", hooks=Hooks(erase={"oauth": erase})),
        Plugin(name="clash", loops={"erasure": loop}),
        Plugin(name="oauth"),
    ):
        with pytest.raises(ValueError, match=r"oauth|erasure"):
            root.create_app(settings, root.OPERATOR, extra=[clash])


async def test_a_plugin_given_as_a_value_starts_with_the_services_and_stops_after_its_hooks_ran(settings: Settings):
    seen: list[str] = []

    @asynccontextmanager
    async def lifecycle(services: Any) -> AsyncIterator[None]:
        seen.append(f"started with {type(services).__name__}")
        yield
        seen.append("stopped")

    async def status(user_id: str) -> dict[str, Any]:
        return {"user": user_id}

    extra = Plugin(name="test-part", hooks=Hooks(status={"test-part": status}), start=lifecycle)
    async with started(settings, (), extra=[extra]) as app:
        assert seen == ["started with Services"]
        assert list(app[SERVICES].hooks.status) == ["test-part"]
        assert await app[SERVICES].hooks.status["test-part"]("u1") == {"user": "u1"}
    assert seen == ["started with Services", "stopped"]
