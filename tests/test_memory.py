from collections.abc import Callable

import pytest

from unifiedq.drivers import memory
from unifiedq.testing.suite import QueueConformance


class TestMemory(QueueConformance):
    URL = "memory://{name}"
    LEASE_OPTIONS = {"visibility_timeout": 0.5}
    LEASE_SECONDS = 0.5
    DELAY_SLACK = 0.2

    @pytest.fixture
    def restart_backend(self) -> Callable[[], None]:
        return memory.reset
