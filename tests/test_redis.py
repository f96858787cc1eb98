"""redis:// driver: the conformance suite plus asynq-specific checks, on a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from unifiedq.testing.fixtures import require_binary
from unifiedq.testing.servers import RedisServer
from unifiedq.testing.suite import QueueConformance


@pytest.fixture(scope="module")
def persistent_redis() -> Iterator[RedisServer]:
    """A private AOF-backed Redis, for the durability check (restart keeps data)."""
    require_binary("redis-server")
    server = RedisServer(persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TestRedis(QueueConformance):
    # Short leases without the heartbeat, so un-acked jobs really come back.
    LEASE_OPTIONS = {"visibility_timeout": 1.0, "heartbeat": False}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 0.5

    @pytest.fixture
    def url_template(self, request: pytest.FixtureRequest, redis_url: str) -> str:
        if request.node.originalname == "test_durability_matches_flag":
            server: RedisServer = request.getfixturevalue("persistent_redis")
            return server.url + "?queue={name}"
        return redis_url + "?queue={name}"

    @pytest.fixture
    def restart_backend(
        self, request: pytest.FixtureRequest
    ) -> Callable[[], None] | None:
        if request.node.originalname != "test_durability_matches_flag":
            return None
        server: RedisServer = request.getfixturevalue("persistent_redis")
        return server.restart
