"""Fixtures shared by the test packages: a real RabbitMQ node (one per test worker)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.rabbitmq_server import RabbitMQServer, find_server


def rabbitmq_or_skip() -> None:
    """Skip a test that needs RabbitMQ when it is not installed, unless the suite was
    told it must not be skipped (CI), where that is a failure."""
    if find_server() is None:
        if os.environ.get("SURELAY_RABBITMQ_TESTS") == "required":
            pytest.fail("SURELAY_RABBITMQ_TESTS=required but rabbitmq-server is missing")
        pytest.skip("RabbitMQ is not installed (apt-get install rabbitmq-server)")


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """One broker node for this test worker's session (tests use queues of their own)."""
    rabbitmq_or_skip()
    server = RabbitMQServer().start()
    try:
        yield server
    finally:
        server.close()
