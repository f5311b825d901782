"""The private Redis fallback that tests and the embedded platform use when no Redis is running."""

from __future__ import annotations

import redis

from searchr1.redis_server import PrivateRedis, answers


def test_private_redis_starts_serves_streams_and_stops() -> None:
    with PrivateRedis() as server:
        assert answers(server.url)
        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"k": "v"})
        client.xgroup_create("s", "g", id="0")
        assert client.xautoclaim("s", "g", "c", min_idle_time=0)[0] is not None  # Redis >= 6.2 features
        url = server.url
    assert not answers(url, timeout_s=0.2)
