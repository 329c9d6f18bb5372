"""Every type string daprd registers for a driver mechakit ships loads unchanged from YAML.

The pairs are daprd's own registrations (``cmd/daprd/components/*.go``): an alias there is a
name users have in their files, so it must resolve to the same driver as the primary name.
"""

from __future__ import annotations

import pytest

from mechakit.core.registry import default_registry

DAPR_TYPE_STRINGS = {
    "state.in-memory": "state.in-memory",
    "state.sqlite": "state.sqlite",
    "state.sqlite3": "state.sqlite",
    "state.redis": "state.redis",
    "state.postgresql": "state.postgresql",
    "state.postgres": "state.postgresql",
    "state.aws.dynamodb": "state.aws.dynamodb",
    "pubsub.in-memory": "pubsub.in-memory",
    "pubsub.redis": "pubsub.redis",
    "pubsub.jetstream": "pubsub.jetstream",
    "pubsub.aws.snssqs": "pubsub.aws.snssqs",
    "pubsub.snssqs": "pubsub.aws.snssqs",
    "pubsub.kafka": "pubsub.kafka",
    "pubsub.rabbitmq": "pubsub.rabbitmq",
    "pubsub.mqtt3": "pubsub.mqtt3",
    "pubsub.mqtt": "pubsub.mqtt3",
    "pubsub.gcp.pubsub": "pubsub.gcp.pubsub",
    "pubsub.azure.servicebus.topics": "pubsub.azure.servicebus.topics",
    "pubsub.azure.servicebus": "pubsub.azure.servicebus.topics",
    "pubsub.azure.servicebus.queues": "pubsub.azure.servicebus.queues",
    "pubsub.azure.servicebusqueues": "pubsub.azure.servicebus.queues",
    "lock.redis": "lock.redis",
    "configuration.redis": "configuration.redis",
    "configuration.postgresql": "configuration.postgresql",
    "configuration.postgres": "configuration.postgresql",
    "secretstores.local.file": "secretstores.local.file",
    "secretstores.local.env": "secretstores.local.env",
    "secretstores.hashicorp.vault": "secretstores.hashicorp.vault",
    "secretstores.aws.secretmanager": "secretstores.aws.secretsmanager",
    "secretstores.aws.parameterstore": "secretstores.aws.parameterstore",
    "bindings.localstorage": "bindings.localstorage",
    "bindings.redis": "bindings.redis",
    "bindings.postgresql": "bindings.postgresql",
    "bindings.postgres": "bindings.postgresql",
    "bindings.aws.s3": "bindings.aws.s3",
    "bindings.cron": "bindings.cron",
    "bindings.http": "bindings.http",
    "bindings.kafka": "bindings.kafka",
    "bindings.rabbitmq": "bindings.rabbitmq",
    "bindings.mqtt3": "bindings.mqtt3",
    "bindings.mqtt": "bindings.mqtt3",
}


@pytest.mark.parametrize(("dapr_type", "driver"), sorted(DAPR_TYPE_STRINGS.items()))
def test_daprs_type_string_resolves_to_the_driver(dapr_type: str, driver: str) -> None:
    assert default_registry().resolve(dapr_type, "v1").type == driver
