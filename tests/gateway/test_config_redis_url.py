import pytest

from foundation.config import load
from foundation.errors import ConfigError


def test_a_unix_socket_redis_url_is_accepted() -> None:
    settings = load({"ALLY_REDIS_URL": "unix:///var/run/redis/redis.sock"})
    assert settings.redis_url == "unix:///var/run/redis/redis.sock"


@pytest.mark.parametrize("url", ["unix://", "unix:relative.sock", "http://127.0.0.1:6379", "redis://"])
def test_a_redis_url_without_a_place_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match="ALLY_REDIS_URL"):
        load({"ALLY_REDIS_URL": url})
