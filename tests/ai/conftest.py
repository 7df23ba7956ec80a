from __future__ import annotations

from pathlib import Path

import pytest

from foundation.config import Settings
from tests.support.anthropic import API_KEY, AnthropicStandIn
from tests.support.gateway import make_settings
from tests.support.relay import FALLBACK


@pytest.fixture
def settings(tmp_path: Path, anthropic_api: AnthropicStandIn) -> Settings:
    return make_settings(
        tmp_path,
        anthropic_api_key=API_KEY,
        anthropic_base_url=anthropic_api.url,
        ai_fallbacks=(FALLBACK,),
        ai_attempts=2,
        ai_backoff=0.0,
        ai_timeout=5.0,
    )
