"""configuration.postgresql beyond the conformance suite: table, trigger, channels, reconnects."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from mechakit.conformance.backends import BackendInfo
from mechakit.conformance.suites.configuration import Updates
from mechakit.core.component import ComponentMetadata
from mechakit.core.configuration import GetConfigurationRequest, SubscribeConfigurationRequest
from mechakit.core.errors import ConfigurationError, MetadataError
from mechakit.core.registry import default_registry

pytest_plugins = ["postgres_server"]  # fixture postgres_server

pytest.importorskip("psycopg")

Driver = Callable[..., Awaitable[Any]]
TYPE = "configuration.postgresql"


def new_table(label: str) -> str:
    return f"cfg_{label}_{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def sql(postgres_server: BackendInfo) -> AsyncIterator[Any]:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(postgres_server.values["url"], autocommit=True)
    yield conn
    await conn.close()


@pytest_asyncio.fixture
async def driver(postgres_server: BackendInfo) -> AsyncIterator[Driver]:
    """``await driver(table=..., **metadata)``: an initialised store, closed after the test."""
    made: list[Any] = []

    async def make(**metadata: str) -> Any:
        store = default_registry().create(TYPE)
        properties = {"connectionString": postgres_server.values["url"], **metadata}
        await store.init(ComponentMetadata(name="test", type=TYPE, properties=properties))
        made.append(store)
        return store

    yield make
    for store in reversed(made):
        await store.close()


async def write(sql: Any, table: str, key: str, value: str, version: str = "1") -> None:
    await sql.execute(
        f'INSERT INTO "{table}" (key, value, version) VALUES (%s, %s, %s) '
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
        (key, value, version),
    )


# --- settings and table -------------------------------------------------------------------


async def test_missing_table_setting_is_refused_naming_table(postgres_server: BackendInfo) -> None:
    store = default_registry().create(TYPE)
    with pytest.raises(MetadataError) as caught:
        await store.init(
            ComponentMetadata("test", TYPE, {"connectionString": postgres_server.values["url"]})
        )
    assert caught.value.field == "table" and "'table' is required" in str(caught.value)


@pytest.mark.parametrize("table", ["cfg; DROP TABLE x", "1cfg", 'c"fg', "a.b.c"])
async def test_table_names_that_are_not_identifiers_are_refused(driver: Driver, table: str) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(table=table)
    assert caught.value.field == "table"


async def test_a_missing_table_is_created_with_the_item_columns(driver: Driver, sql: Any) -> None:
    table = new_table("created")
    await driver(table=table)
    cursor = await sql.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    )
    assert await cursor.fetchall() == [
        ("key", "text"),
        ("value", "text"),
        ("version", "text"),
        ("metadata", "jsonb"),
    ]


async def test_a_table_without_item_columns_is_refused_naming_table(
    driver: Driver, sql: Any
) -> None:
    table = new_table("foreign")
    await sql.execute(f'CREATE TABLE "{table}" (key text, payload text)')
    with pytest.raises(ConfigurationError) as caught:
        await driver(table=table)
    assert caught.value.field == "table" and table in str(caught.value)


async def test_get_returns_value_version_and_metadata_as_text(driver: Driver, sql: Any) -> None:
    table = new_table("get")
    store = await driver(table=table)
    await sql.execute(
        f'INSERT INTO "{table}" VALUES (%s, %s, %s, %s::jsonb), (%s, %s, %s, NULL)',
        ("a", "1", "v7", '{"owner": "ops", "weight": 3}', "b", "2", "v1"),
    )
    items = await store.get(GetConfigurationRequest())
    assert {k: (i.value, i.version, dict(i.metadata)) for k, i in items.items()} == {
        "a": ("1", "v7", {"owner": "ops", "weight": "3"}),
        "b": ("2", "v1", {}),
    }


async def test_a_table_without_metadata_column_is_read(driver: Driver, sql: Any) -> None:
    """Upstream's documented table has the column, but older ones may not."""
    table = new_table("nometa")
    await sql.execute(f'CREATE TABLE "{table}" (key text, value text, version text)')
    await sql.execute(f'INSERT INTO "{table}" VALUES (%s, %s, %s)', ("k", "v", "1"))
    store = await driver(table=table)
    items = await store.get(GetConfigurationRequest(keys=["k"]))
    assert (items["k"].value, items["k"].version, dict(items["k"].metadata)) == ("v", "1", {})


# --- subscriptions ------------------------------------------------------------------------


async def test_first_subscription_creates_the_notify_trigger_once(driver: Driver, sql: Any) -> None:
    table = new_table("trigger")
    store, other = await driver(table=table), await driver(table=table)
    await store.subscribe(SubscribeConfigurationRequest(keys=["k"]), Updates())
    await other.subscribe(SubscribeConfigurationRequest(keys=["k"]), Updates())
    cursor = await sql.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
        (table,),
    )
    assert await cursor.fetchall() == [("mechakit_configuration_notify",)]


async def test_a_value_too_large_for_a_notification_is_read_back(driver: Driver, sql: Any) -> None:
    table = new_table("large")
    store = await driver(table=table)
    updates = Updates()
    await store.subscribe(SubscribeConfigurationRequest(keys=["big"]), updates)
    large = "x" * 20_000
    await write(sql, table, "big", large, "2")
    item = await updates.wait_for_value("big", large, 5)
    assert item.version == "2"


async def test_upstream_trigger_on_a_named_channel_is_understood(driver: Driver, sql: Any) -> None:
    """Dapr's documented trigger (json payload with table, action, data) on 'pgNotifyChannel'."""
    table = new_table("dapr")
    channel = f"chan_{uuid.uuid4().hex[:8]}"
    store = await driver(table=table)
    await sql.execute(
        f"""CREATE FUNCTION "{table}_event"() RETURNS TRIGGER AS $$
        DECLARE data json; notification json;
        BEGIN
            IF (TG_OP = 'DELETE') THEN data = row_to_json(OLD); ELSE data = row_to_json(NEW);
            END IF;
            notification = json_build_object('table', TG_TABLE_NAME, 'action', TG_OP,
                                              'data', data);
            PERFORM pg_notify('{channel}', notification::text);
            RETURN NULL;
        END; $$ LANGUAGE plpgsql"""
    )
    await sql.execute(
        f'CREATE TRIGGER "{table}_cfg" AFTER INSERT OR UPDATE OR DELETE ON "{table}" '
        f'FOR EACH ROW EXECUTE PROCEDURE "{table}_event"()'
    )
    updates = Updates()
    await store.subscribe(
        SubscribeConfigurationRequest(keys=["k"], metadata={"pgNotifyChannel": channel}), updates
    )
    await write(sql, table, "k", "via dapr trigger")
    await updates.wait_for_value("k", "via dapr trigger", 5)
    await sql.execute(f'DELETE FROM "{table}" WHERE key = %s', ("k",))
    await updates.wait_for_value("k", "", 5)
    cursor = await sql.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'mechakit_configuration_notify' "
        "AND tgrelid = to_regclass(%s)",
        (table,),
    )
    assert await cursor.fetchone() == (0,), "a user's channel must not get the driver's trigger"


async def test_without_privilege_to_create_the_trigger_subscribe_says_what_to_run(
    driver: Driver, sql: Any, postgres_server: BackendInfo
) -> None:
    if postgres_server.source != "local binary":
        pytest.skip("needs a server where this test may create a login role")
    table, role = new_table("denied"), f"reader_{uuid.uuid4().hex[:8]}"
    await driver(table=table)
    await sql.execute(f'CREATE ROLE "{role}" LOGIN')
    await sql.execute(f'GRANT SELECT ON "{table}" TO "{role}"')
    values = postgres_server.values
    url = f"postgresql://{role}@{values['host']}:{values['port']}/{values['dbname']}"
    store = await driver(table=table, connectionString=url)
    with pytest.raises(ConfigurationError) as caught:
        await store.subscribe(SubscribeConfigurationRequest(keys=["k"]), Updates())
    assert caught.value.field == "table"
    assert "CREATE TRIGGER" in str(caught.value) and "configuration.postgresql 'test'" in str(
        caught.value
    )


async def test_lost_listen_connection_reconnects_and_resends_what_changed_meanwhile(
    driver: Driver, sql: Any
) -> None:
    table = new_table("reconnect")
    store = await driver(table=table)
    updates = Updates()
    await store.subscribe(SubscribeConfigurationRequest(keys=["k"]), updates)
    await write(sql, table, "k", "before", "1")
    await updates.wait_for_value("k", "before", 5)

    await sql.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
    )
    await write(sql, table, "k", "while away", "2")
    await updates.wait_for_value("k", "while away", 10)
    await write(sql, table, "k", "after", "3")
    await updates.wait_for_value("k", "after", 10)


async def test_items_of_another_table_on_the_same_channel_are_ignored(
    driver: Driver, sql: Any
) -> None:
    table, other = new_table("mine"), new_table("theirs")
    channel = f"shared_{uuid.uuid4().hex[:8]}"
    store = await driver(table=table, pgNotifyChannel=channel)
    await driver(table=other, pgNotifyChannel=channel)
    updates = Updates()
    await store.subscribe(SubscribeConfigurationRequest(), updates)
    other_store = await driver(table=other, pgNotifyChannel=channel)
    await other_store.subscribe(SubscribeConfigurationRequest(), Updates())
    await write(sql, other, "k", "not mine")
    await write(sql, table, "k", "mine")
    await updates.wait_for_value("k", "mine", 5)
    await asyncio.sleep(0.3)
    assert updates.values_of("k") == ["mine"]
