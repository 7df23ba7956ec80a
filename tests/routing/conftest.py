"""Every delivery test runs twice: against the single Redis and against a real Redis Cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.config import Settings
from tests.support.gateway import make_settings


@pytest.fixture(params=["single", "cluster"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return make_settings(tmp_path, redis_url=cluster.url, redis_cluster=True)
    return make_settings(tmp_path)
