"""Fixtures for the RabbitMQ driver tests: one broker node per test session, and a builder.

Test modules load them with ``pytest_plugins = ["rabbitmq_server"]``. The node is the
"rabbitmq" conformance backend (``MECHAKIT_TEST_RABBITMQ_URL``, else a ``rabbitmq-server``
node of our own on free ports); a node takes seconds to start, so the session shares one.
Fault tests stop and start it through ``rabbitmq_node`` (skipped when it is not ours).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from rabbitmq_helpers import Make

from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.conformance.backends_rabbitmq import RabbitMQNode
from mechakit.core.component import ComponentMetadata
from mechakit.core.registry import default_registry


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[BackendInfo]:
    try:
        info = provision("rabbitmq")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()


@pytest.fixture
def rabbitmq_node(rabbitmq: BackendInfo) -> RabbitMQNode:
    """The node process, for tests that stop and start it."""
    node = getattr(rabbitmq.restart, "__self__", None)
    if not isinstance(node, RabbitMQNode):
        pytest.skip("the broker is not ours to stop (MECHAKIT_TEST_RABBITMQ_URL)")
    return node


@pytest_asyncio.fixture
async def make(rabbitmq: BackendInfo) -> AsyncIterator[Make]:
    """``await make("pubsub.rabbitmq", app_id="orders", **metadata)``: open, closed after."""
    made: list[Any] = []

    async def build(type_: str, app_id: str = "test-app", **metadata: str) -> Any:
        driver = default_registry().create(type_)
        properties = {"connectionString": rabbitmq.values["url"], **metadata}
        await driver.init(
            ComponentMetadata(name="rabbit", type=type_, properties=properties, app_id=app_id)
        )
        made.append(driver)
        return driver

    yield build
    for driver in reversed(made):
        await driver.close()


@pytest_asyncio.fixture
async def raw_channel(rabbitmq: BackendInfo) -> AsyncIterator[Any]:
    """A plain aio-pika channel on the same broker, to look behind a driver's back."""
    import aio_pika

    connection = await aio_pika.connect(rabbitmq.values["url"])
    try:
        yield await connection.channel()
    finally:
        await connection.close()
