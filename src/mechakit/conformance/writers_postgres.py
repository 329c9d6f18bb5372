"""Writes configuration items for the conformance suite into the table a component reads.

Target option ``writer: "mechakit.conformance.writers_postgres:configuration_writer"``. The
writer connects with the component's own ``connectionString`` and upserts rows into its
``table`` with a fresh, increasing version on every write, as an application would; the
table's trigger then notifies the component's subscriptions.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mechakit.components._shared.postgresql import connect, quote_name
from mechakit.components.configuration.postgresql import PostgreSQLConfigurationSettings


class PostgreSQLConfigurationWriter:
    def __init__(self, conn: Any, table: str) -> None:
        self._conn = conn
        self._table = quote_name(table)
        self._versions = itertools.count(time.time_ns())

    async def set(self, items: Mapping[str, str]) -> None:
        async with self._conn.transaction():
            for key, value in items.items():
                await self._conn.execute(
                    f"INSERT INTO {self._table} (key, value, version) VALUES (%s, %s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "version = excluded.version",
                    (key, value, str(next(self._versions))),
                )

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            await self._conn.execute(
                f"DELETE FROM {self._table} WHERE key = ANY(%s)", (list(keys),)
            )

    async def aclose(self) -> None:
        await self._conn.close()


async def configuration_writer(
    component: Any, context: Mapping[str, str]
) -> PostgreSQLConfigurationWriter:
    """The suite's factory: ``(component, conformance_context) -> writer``."""
    metadata = component.metadata
    label = f"conformance writer for {metadata.label}"
    settings = PostgreSQLConfigurationSettings.from_metadata(metadata.properties, component=label)
    return PostgreSQLConfigurationWriter(await connect(settings, component=label), settings.table)
