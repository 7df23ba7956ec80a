"""Typed application keys for what every layer reads from the aiohttp app: the settings and
the process's role. The services have theirs next to their type (`routing/services.py`), and
so has the OAuth broker (`oauth/broker.py`)."""

from __future__ import annotations

from aiohttp import web

from foundation.config import Settings

SETTINGS = web.AppKey("settings", Settings)
ROLE = web.AppKey("role", str)
