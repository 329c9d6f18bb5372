"""Writes configuration items for the conformance suite into the Redis a component reads.

Target option ``writer: "mechakit.conformance.writers_redis:configuration_writer"``. The
writer connects with the component's own metadata (same host, database, credentials) and
stores ``value||version`` strings with a fresh, increasing version on every write.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mechakit.components._shared.redis import RedisSettings, close_client, connect, is_cluster
from mechakit.components.configuration.redis import format_item


class RedisConfigurationWriter:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._versions = itertools.count(time.time_ns())

    async def set(self, items: Mapping[str, str]) -> None:
        mapping = {
            key: format_item(value, str(next(self._versions))) for key, value in items.items()
        }
        if not mapping:
            return
        if is_cluster(self._client):  # keys in several hash slots: one MSET per slot
            await self._client.mset_nonatomic(mapping)
        else:
            await self._client.mset(mapping)

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            await self._client.delete(*keys)  # redis-py splits it by slot on a cluster

    async def aclose(self) -> None:
        await close_client(self._client)


async def configuration_writer(
    component: Any, context: Mapping[str, str]
) -> RedisConfigurationWriter:
    """The suite's factory: ``(component, conformance_context) -> writer``."""
    metadata = component.metadata
    label = f"conformance writer for {metadata.label}"
    settings = RedisSettings.from_metadata(metadata.properties, component=label)
    return RedisConfigurationWriter(await connect(settings, component=label))
