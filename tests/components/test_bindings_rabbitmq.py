"""bindings.rabbitmq against a real broker: create then read on one queue, redelivery of a
failed event, the queue's TTL and priorities, per-message TTL, a broker restart.

Runs against the "rabbitmq" conformance backend (``MECHAKIT_TEST_RABBITMQ_URL``, else a
``rabbitmq-server`` node of our own); skipped with the reason when neither is available.
There is no conformance row: the suite's input tests wait for events nobody sends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from rabbitmq_helpers import TIMEOUT, Make, unique, wait_for

from mechakit.components.bindings.rabbitmq import RabbitMQBindingSettings
from mechakit.conformance.backends_rabbitmq import RabbitMQNode
from mechakit.core.bindings import BindingEvent, InvokeRequest
from mechakit.core.errors import InvalidRequestError, MetadataError, NotSupportedError

pytest_plugins = ["rabbitmq_server"]


class Events:
    """An input handler that records events; ``fail`` makes the first calls raise."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[BindingEvent] = []
        self.handled: list[BindingEvent] = []
        self._fail = fail

    async def __call__(self, event: BindingEvent) -> None:
        self.calls.append(event)
        if len(self.calls) <= self._fail:
            raise RuntimeError("handler fails")
        self.handled.append(event)

    @property
    def datas(self) -> list[bytes]:
        return [e.data for e in self.handled]


async def create(binding: Any, data: bytes, **metadata: str) -> None:
    await binding.invoke(InvokeRequest(operation="create", data=data, metadata=metadata))


def test_queue_name_is_required_and_upstream_names_decode() -> None:
    with pytest.raises(MetadataError, match="queueName"):
        RabbitMQBindingSettings.from_metadata({"host": "amqp://x"}, component="b")
    s = RabbitMQBindingSettings.from_metadata(
        {"host": "amqp://x", "queueName": "q", "reconnectWaitInSeconds": "2s", "ttlInSeconds": "5"},
        component="b",
    )
    assert s.reconnect_wait.total_seconds() == 2
    assert dict(s.queue_spec().arguments) == {"x-message-ttl": 5000}
    assert (s.durable, s.delete_when_unused, s.content_type) == (False, False, "text/plain")


async def test_create_then_read_delivers_data_headers_and_content_type(make: Make) -> None:
    binding = await make("bindings.rabbitmq", queueName=unique("q"), contentType="text/csv")
    events = Events()
    await create(binding, b"a,b", order="7")
    subscription = await binding.read(events)
    await wait_for(lambda: len(events.handled) == 1, "the event")
    assert events.datas == [b"a,b"]
    assert events.handled[0].metadata["order"] == "7"
    assert events.handled[0].metadata["contentType"] == "text/csv"
    await subscription.cancel()
    assert not subscription.active


async def test_only_create_is_supported_and_bad_metadata_is_refused(make: Make) -> None:
    binding = await make("bindings.rabbitmq", queueName=unique("q"))
    assert list(binding.operations()) == ["create"]
    with pytest.raises(NotSupportedError):
        await binding.invoke(InvokeRequest(operation="get"))
    with pytest.raises(InvalidRequestError, match="ttlInSeconds"):
        await create(binding, b"x", ttlInSeconds="soon")
    with pytest.raises(InvalidRequestError, match="priority"):
        await create(binding, b"x", priority="300")


async def test_failed_event_is_redelivered_until_handled(make: Make) -> None:
    binding = await make("bindings.rabbitmq", queueName=unique("q"))
    events = Events(fail=2)
    await binding.read(events)
    started = time.monotonic()
    await create(binding, b"retry")
    await wait_for(lambda: len(events.handled) == 1, "the third delivery")
    assert [e.data for e in events.calls] == [b"retry"] * 3
    assert time.monotonic() - started >= 1.0, "redelivered without the doubling delay"


async def test_queue_ttl_and_message_ttl_expire_unread_events(make: Make) -> None:
    binding = await make("bindings.rabbitmq", queueName=unique("q"), ttlInSeconds="1")
    await create(binding, b"queue-ttl")
    other = await make("bindings.rabbitmq", queueName=unique("q"))
    await create(other, b"message-ttl", ttlInSeconds="1")
    await create(other, b"kept")
    await asyncio.sleep(1.5)
    await create(binding, b"fresh")
    first, second = Events(), Events()
    await binding.read(first)
    await other.read(second)
    await wait_for(lambda: bool(first.handled and second.handled), "the unexpired events")
    await asyncio.sleep(0.3)
    assert first.datas == [b"fresh"] and second.datas == [b"kept"]


async def test_max_priority_queue_delivers_higher_priority_first(make: Make) -> None:
    binding = await make(
        "bindings.rabbitmq", queueName=unique("q"), maxPriority="5", prefetchCount="1"
    )
    await create(binding, b"low", priority="1")
    await create(binding, b"high", priority="5")
    events = Events()
    await binding.read(events)
    await wait_for(lambda: len(events.handled) == 2, "both events")
    assert events.datas == [b"high", b"low"]


@pytest.mark.fault
async def test_reading_resumes_after_a_broker_restart(
    make: Make, rabbitmq_node: RabbitMQNode
) -> None:
    queue = unique("q")
    settings = {"queueName": queue, "durable": "true", "reconnectWait": "500ms"}
    binding = await make("bindings.rabbitmq", **settings, deliveryMode="2")
    events = Events()
    await binding.read(events)
    await create(binding, b"before")
    await wait_for(lambda: len(events.handled) == 1, "the first event")
    await asyncio.to_thread(rabbitmq_node.restart)
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            await create(binding, b"after")
            break
        except Exception:
            assert time.monotonic() < deadline, "create kept failing after the restart"
            await asyncio.sleep(0.2)
    await wait_for(lambda: b"after" in events.datas, "the event sent after the restart")
