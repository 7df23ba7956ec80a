"""Typed application keys for what the aiohttp app holds."""

from __future__ import annotations

from aiohttp import web

from foundation.config import Settings
from gateway.services import Services

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
ROLE = web.AppKey("role", str)
