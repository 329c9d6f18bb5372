"""Every built-in pub/sub driver, used before ``init`` or after ``close``, raises one error:
a non-retriable ``ComponentNotOpenError`` with one wording, from every public operation
(publish, bulk_publish, subscribe, ping). ``test_not_open.py`` does the same for the other
categories.

Init-then-close runs for every driver: pubsub.redis and pubsub.aws.snssqs against their
conformance backends (skipped with the reason when one is not available).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mechakit.conformance.backends import BackendInfo
from mechakit.core.component import Component, ComponentMetadata
from mechakit.core.errors import NOT_OPEN, ComponentNotOpenError
from mechakit.core.pubsub import (
    BulkPublishEntry,
    BulkPublishRequest,
    Message,
    PublishRequest,
    PubSub,
    SubscribeRequest,
)
from mechakit.core.registry import ComponentSpec, default_registry

pytest_plugins = [
    "redis_server",
    "moto_server",
    "rabbitmq_server",
]  # fixtures redis_server, moto, rabbitmq
# The NATS and MQTT drivers provision their backend themselves (_provisioned).

Operation = Callable[[Any], Awaitable[object]]


async def _handler(message: Message) -> None:
    pass


def operations(component: PubSub[Any]) -> dict[str, Operation]:
    """Every public operation of the pub/sub contract, with a valid request."""
    ops: dict[str, Operation] = {
        "publish": lambda c: c.publish(PublishRequest("t", b"x")),
        "bulk_publish": lambda c: c.bulk_publish(
            BulkPublishRequest("t", [BulkPublishEntry("1", b"x"), BulkPublishEntry("2", b"y")])
        ),
        "subscribe": lambda c: c.subscribe(SubscribeRequest("orders"), _handler),
    }
    if type(component).ping is not Component.ping:
        ops["ping"] = lambda c: c.ping()
    return ops


def built_in_specs() -> list[ComponentSpec]:
    return [
        spec
        for spec in default_registry().specs("pubsub")
        if spec.target.startswith("mechakit.components.")
    ]


def driver(spec: ComponentSpec) -> PubSub[Any]:
    if not spec.installed():
        pytest.skip(f"{spec.type}: {spec.install_hint}")
    made = spec.load()()
    assert isinstance(made, PubSub)
    return made


async def assert_not_open(component: PubSub[Any], label: str) -> None:
    for name, op in operations(component).items():
        with pytest.raises(ComponentNotOpenError) as caught:
            await op(component)
        error = caught.value
        assert (error.reason, error.component, error.retriable) == (NOT_OPEN, label, False), name


def test_every_built_in_pubsub_driver_is_covered() -> None:
    assert {s.type for s in built_in_specs()} == set(BACKENDS)


@pytest.mark.parametrize("spec", built_in_specs(), ids=lambda spec: spec.type)
async def test_every_operation_before_init_is_not_open(spec: ComponentSpec) -> None:
    component = driver(spec)
    await assert_not_open(component, type(component).__name__)


@pytest.mark.parametrize("spec", built_in_specs(), ids=lambda spec: spec.type)
async def test_every_operation_after_close_without_init_is_not_open(spec: ComponentSpec) -> None:
    component = driver(spec)
    await component.close()
    await assert_not_open(component, type(component).__name__)


def _redis(request: pytest.FixtureRequest) -> dict[str, str]:
    server: BackendInfo = request.getfixturevalue("redis_server")
    return {"redisHost": server.values["address"]}


def _moto(request: pytest.FixtureRequest) -> dict[str, str]:
    moto: BackendInfo = request.getfixturevalue("moto")
    keys = ("endpoint", "region", "accessKey", "secretKey")
    return {key: moto.values[key] for key in keys}


def _provisioned(backend: str, **fields: str) -> Callable[[pytest.FixtureRequest], dict[str, str]]:
    """Metadata ``{field: <the backend's value>}`` on a backend started for this test."""

    def start(request: pytest.FixtureRequest) -> dict[str, str]:
        from mechakit.conformance.backends import BackendUnavailable, provision

        try:
            server = provision(backend)
        except BackendUnavailable as exc:
            pytest.skip(str(exc))
        request.addfinalizer(server.stop)
        return {field: server.values[value] for field, value in fields.items()}

    return start


def _rabbitmq(request: pytest.FixtureRequest) -> dict[str, str]:
    node: BackendInfo = request.getfixturevalue("rabbitmq")  # slow to start: one per session
    return {"connectionString": node.values["url"]}


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], dict[str, str]]] = {
    "pubsub.in-memory": lambda request: {},
    "pubsub.redis": _redis,
    "pubsub.aws.snssqs": _moto,
    "pubsub.jetstream": _provisioned("nats", natsURL="url"),
    "pubsub.natsstreaming": _provisioned("nats", natsURL="url"),
    "pubsub.kafka": _provisioned("kafka", brokers="brokers"),
    "pubsub.rabbitmq": _rabbitmq,
    "pubsub.mqtt3": _provisioned("mosquitto", url="url"),
    "pubsub.gcp.pubsub": _provisioned("gcp-pubsub", projectID="project", endpoint="address"),
    "pubsub.azure.servicebus.topics": _provisioned(
        "azure-servicebus", connectionString="connection_string"
    ),
    "pubsub.azure.servicebus.queues": _provisioned(
        "azure-servicebus", connectionString="connection_string"
    ),
}
"""Metadata that opens each driver (on its conformance backend, started on demand)."""


@pytest.mark.parametrize("spec", built_in_specs(), ids=lambda spec: spec.type)
async def test_every_operation_after_init_and_close_is_not_open(
    spec: ComponentSpec, request: pytest.FixtureRequest
) -> None:
    component = driver(spec)
    properties = BACKENDS[spec.type](request)
    await component.init(ComponentMetadata("it", spec.type, properties, app_id="not-open"))
    await component.subscribe(SubscribeRequest("orders"), _handler)  # stopped by close
    await component.close()
    await component.close()
    await assert_not_open(component, f"{spec.type} 'it'")
