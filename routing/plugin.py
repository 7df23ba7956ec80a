"""A plugin: what one part of the gateway (a channel, OAuth's routes, the AI relay) adds to the
app, declared when the app is built and fixed from then on.

    routes  aiohttp route definitions
    hooks   per-user hooks (`routing/hooks.py`), each under its own name
    loops   background loops by name, run by processes with the worker role
    start   the plugin's own start-up and clean-up, given the services once they are built

A plugin module has `setup(app) -> Plugin`. The composition root (`gateway/app.py`) calls it
for every plugin, merges their hooks and loops before anything starts, builds the services
with them, and then enters each plugin's `start(services)` in order of plugin name, leaving
them in reverse at the end. Hooks and loops are reached only once their plugin has started:
one that needs what start-up builds finds it under the plugin's own app key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from aiohttp import web

from routing.hooks import Hooks, Loop, frozen
from routing.services import Services

Lifecycle = Callable[[Services], AbstractAsyncContextManager[None]]


@dataclass(frozen=True, kw_only=True)
class Plugin:
    name: str
    routes: Sequence[web.RouteDef] = ()
    hooks: Hooks = field(default_factory=Hooks)
    loops: Mapping[str, Loop] = field(default_factory=dict)
    start: Lifecycle | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", tuple(self.routes))
        object.__setattr__(self, "loops", frozen(self.loops))
