"""The amqp:// driver against a real RabbitMQ started by the rig."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from unifiedq.testing.fixtures import RigServer, require_managed
from unifiedq.testing.suite import QueueConformance


class TestAmqpConformance(QueueConformance):
    LEASE_OPTIONS = {"visibility_timeout": 1.0}
    LEASE_SECONDS = 1.0
    DELAY_SLACK = 1.0
    CONCURRENT_JOBS = 1000

    @pytest.fixture
    def url_template(self, amqp_url: str) -> str:
        return amqp_url + "?queue={name}"

    @pytest.fixture
    def restart_backend(self, rabbitmq_server: RigServer) -> Callable[[], None]:
        return require_managed(rabbitmq_server).restart
