"""ALLY_QUEUE_MAX_EVENTS, ALLY_QUEUE_MAX_BYTES (contract §9.2) and ALLY_METRICS_TOKEN (§9.3)."""

from __future__ import annotations

import pytest

from foundation.config import load
from foundation.errors import ConfigError


def test_the_queue_caps_default_to_ten_thousand_events_and_64_mib() -> None:
    settings = load({})
    assert (settings.queue_max_events, settings.queue_max_bytes) == (10000, 67108864)
    assert settings.metrics_token is None


def test_the_queue_caps_and_the_metrics_token_are_read() -> None:
    env = {"ALLY_QUEUE_MAX_EVENTS": "500", "ALLY_QUEUE_MAX_BYTES": "1048576", "ALLY_METRICS_TOKEN": "scrape-me"}
    settings = load(env)
    assert (settings.queue_max_events, settings.queue_max_bytes) == (500, 1048576)
    assert settings.metrics_token == "scrape-me"
    assert "scrape-me" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "raw"),
    [("ALLY_QUEUE_MAX_EVENTS", "0"), ("ALLY_QUEUE_MAX_EVENTS", "many"), ("ALLY_QUEUE_MAX_BYTES", "1000")],
)
def test_a_bad_cap_is_refused_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load({name: raw})
