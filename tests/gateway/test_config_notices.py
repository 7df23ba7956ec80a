"""ALLY_OFFLINE_NOTICE_AFTER: seconds a user's server fails before chats that write are told."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.config import load
from foundation.errors import ConfigError
from tests.support.cli import serve


@pytest.mark.parametrize(("raw", "seconds"), [(None, 60.0), ("0", 0.0), ("1.5", 1.5), ("300", 300.0)])
def test_the_offline_notice_waits_a_minute_unless_told_otherwise(raw: str | None, seconds: float) -> None:
    env = {} if raw is None else {"ALLY_OFFLINE_NOTICE_AFTER": raw}
    assert load(env).offline_notice_after == seconds


@pytest.mark.parametrize("raw", ["soon", "-1", "inf", "nan", "1m"])
def test_a_bad_offline_notice_delay_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="ALLY_OFFLINE_NOTICE_AFTER") as info:
        load({"ALLY_OFFLINE_NOTICE_AFTER": raw})
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_serve_with_a_bad_offline_notice_delay_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    result = serve({"ALLY_OFFLINE_NOTICE_AFTER": "a minute"}, tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "ALLY_OFFLINE_NOTICE_AFTER" in line
    assert result.stdout == ""
