"""The TTL cleanup of state.sqlite, state.postgresql and state.in-memory over many expired
keys: it works in batches, removes every expired key and never a live one, not even one
rewritten while the sweep runs."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import mechakit.conformance.backends_postgres  # noqa: F401  (registers the "postgresql" backend)
from mechakit.components.state._sql import PURGE_BATCH
from mechakit.conformance.backends import BackendInfo
from mechakit.core.component import ComponentMetadata
from mechakit.core.registry import default_registry
from mechakit.core.state import GetRequest, SetRequest, StateStore

pytest_plugins = ["postgres_server"]  # fixture postgres_server

EXPIRING = 2 * PURGE_BATCH + 500
"""More than two batches of the SQL stores' sweep."""
REWRITTEN = 100
LIVE = 200

StoredKeys = Callable[[], Awaitable[set[str]]]


async def open_store(kind: str, properties: dict[str, str]) -> StateStore[Any]:
    store = default_registry().create(f"state.{kind}")
    metadata = {"keyPrefix": "none", "cleanupInterval": "1h", **properties}
    await store.init(ComponentMetadata("cleanup", f"state.{kind}", metadata, app_id="app"))
    assert isinstance(store, StateStore)
    return store


@pytest_asyncio.fixture(params=["sqlite", "in-memory", "postgresql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[StateStore[Any], StoredKeys]]:
    """A store and a look behind the driver at the keys it holds, expired or not."""
    kind = request.param
    if kind == "sqlite":
        db = tmp_path / "state.db"
        opened = await open_store(kind, {"connectionString": str(db)})

        async def sqlite_keys() -> set[str]:
            with sqlite3.connect(db) as conn:
                return {key for (key,) in conn.execute("SELECT key FROM state")}

        yield opened, sqlite_keys
    elif kind == "in-memory":
        opened = await open_store(kind, {})

        async def memory_keys() -> set[str]:
            return set(opened._items)  # type: ignore[attr-defined]

        yield opened, memory_keys
    else:
        import psycopg

        backend: BackendInfo = request.getfixturevalue("postgres_server")
        table = f"cleanup_{id(request)}"
        url = backend.values["url"]
        opened = await open_store(kind, {"connectionString": url, "tableName": table})

        async def postgres_keys() -> set[str]:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                cursor = await conn.execute(f'SELECT key FROM "{table}"')
                return {key for (key,) in await cursor.fetchall()}

        yield opened, postgres_keys
    await opened.close()


async def test_a_sweep_in_batches_removes_every_expired_key_and_never_a_live_one(
    store: tuple[StateStore[Any], StoredKeys],
) -> None:
    driver, stored_keys = store
    expiring = [f"x{i}" for i in range(EXPIRING)]
    for start in range(0, EXPIRING, 500):
        batch = expiring[start : start + 500]
        await driver.bulk_set([SetRequest(k, 1, metadata={"ttlInSeconds": "1"}) for k in batch])
    live = [f"live{i}" for i in range(LIVE)]
    await driver.bulk_set([SetRequest(k, 2) for k in live[: LIVE // 2]])
    await driver.bulk_set(
        [SetRequest(k, 2, metadata={"ttlInSeconds": "3600"}) for k in live[LIVE // 2 :]]
    )
    await asyncio.sleep(1.1)  # every "x" key has expired
    await driver.set(SetRequest("x0", "written again before the sweep"))

    async def rewrite_while_sweeping() -> None:
        for key in expiring[1:REWRITTEN]:
            await driver.set(SetRequest(key, "written again during the sweep"))
            await asyncio.sleep(0)

    await asyncio.gather(driver._purge_expired(), rewrite_while_sweeping())  # type: ignore[attr-defined]

    rewritten = set(expiring[:REWRITTEN])
    assert await stored_keys() == set(live) | rewritten
    for key in live:
        item = await driver.get(GetRequest(key))
        assert item is not None and item.value == 2
    for key in rewritten:
        item = await driver.get(GetRequest(key))
        assert item is not None and str(item.value).startswith("written again")


async def test_a_sweep_with_nothing_expired_deletes_nothing(
    store: tuple[StateStore[Any], StoredKeys],
) -> None:
    driver, stored_keys = store
    await driver.bulk_set(
        [SetRequest(f"k{i}", i, metadata={"ttlInSeconds": "60"}) for i in range(50)]
    )
    await driver._purge_expired()  # type: ignore[attr-defined]
    assert await stored_keys() == {f"k{i}" for i in range(50)}
