"""state.postgresql beyond the conformance suite: schema, storage, query, errors, restarts."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

import mechakit.conformance.backends_postgres  # noqa: F401  (registers the "postgresql" backend)
from mechakit.conformance.backends import BackendInfo
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    BulkError,
    ConfigurationError,
    ConnectionFailedError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    MetadataError,
)
from mechakit.core.registry import default_registry
from mechakit.core.state import (
    Concurrency,
    DeleteRequest,
    Filter,
    GetRequest,
    Query,
    SetRequest,
    StateOptions,
)

pytest.importorskip("psycopg")
pytest_plugins = ["postgres_server"]  # fixture postgres_server

Driver = Callable[..., Awaitable[Any]]
FIRST_WRITE = StateOptions(concurrency=Concurrency.FIRST_WRITE)


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def new_table(label: str) -> str:
    return f"t_{label}_{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture
async def driver(postgres_server: BackendInfo) -> AsyncIterator[Driver]:
    """``await driver(name="x", **metadata)``: an initialised state.postgresql, closed after."""
    made: list[Any] = []

    async def make(name: str = "test", **metadata: str) -> Any:
        store = default_registry().create("state.postgresql")
        properties = {"connectionString": postgres_server.values["url"], **metadata}
        await store.init(
            ComponentMetadata(
                name=name, type="state.postgresql", properties=properties, app_id="test-app"
            )
        )
        made.append(store)
        return store

    yield make
    for store in reversed(made):
        await store.close()


@pytest_asyncio.fixture
async def sql(postgres_server: BackendInfo) -> AsyncIterator[Any]:
    """A plain autocommit psycopg connection to the same database, to look behind the driver."""
    import psycopg

    conn = await psycopg.AsyncConnection.connect(postgres_server.values["url"], autocommit=True)
    yield conn
    await conn.close()


async def rows(conn: Any, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(statement, params)
    return list(await cursor.fetchall())


# --- schema -------------------------------------------------------------------------------

MIGRATE_SCRIPT = """
import asyncio, sys, time
from mechakit.core.component import ComponentMetadata
from mechakit.core.registry import default_registry
from mechakit.core.state import SetRequest

async def main(url, table, meta, start_at, n):
    store = default_registry().create("state.postgresql")
    await asyncio.sleep(max(0.0, start_at - time.time()))
    await store.init(ComponentMetadata("race", "state.postgresql", {
        "connectionString": url, "tableName": table, "metadataTableName": meta}, app_id="race"))
    await store.set(SetRequest(f"written-by-{n}", n))
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])))
"""


async def test_processes_creating_the_schema_at_once_make_one_schema_without_error(
    postgres_server: BackendInfo, driver: Driver, sql: Any
) -> None:
    table, meta, count = new_table("race"), new_table("race_meta"), 4
    start_at = time.time() + 2.0  # all children past their imports, then racing

    async def spawn(n: int) -> asyncio.subprocess.Process:
        argv = [postgres_server.values["url"], table, meta, str(start_at), str(n)]
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", MIGRATE_SCRIPT, *argv, stderr=asyncio.subprocess.PIPE
        )

    procs = [await spawn(n) for n in range(count)]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)

    assert [p.returncode for p in procs] == [0] * count, [err.decode() for _, err in outputs]
    assert await rows(sql, f'SELECT key, value FROM "{meta}"') == [(f"schema-version:{table}", "1")]
    store = await driver(tableName=table, metadataTableName=meta, keyPrefix="race")
    items = await store.bulk_get([GetRequest(f"written-by-{n}") for n in range(count)])
    assert [i.value for i in items] == list(range(count))


async def test_schema_qualified_table_is_created_in_that_schema(driver: Driver, sql: Any) -> None:
    schema = new_table("schema")
    await sql.execute(f'CREATE SCHEMA "{schema}"')
    store = await driver(tableName=f"{schema}.State", metadataTableName=f"{schema}.meta")
    await store.set(SetRequest("k", {"in": "schema"}))
    found = await rows(sql, f'SELECT key, value FROM "{schema}"."state"')
    assert found == [("test-app||k", {"in": "schema"})]


async def test_a_table_not_made_by_mechakit_is_refused_naming_table_name(
    driver: Driver, sql: Any
) -> None:
    table = new_table("foreign")
    await sql.execute(f'CREATE TABLE "{table}" (key text PRIMARY KEY, value jsonb)')
    with pytest.raises(ConfigurationError) as caught:
        await driver(tableName=table)
    assert caught.value.field == "tableName"
    assert table in str(caught.value) and "state.postgresql 'test'" in str(caught.value)


async def test_a_newer_schema_version_is_refused(driver: Driver, sql: Any) -> None:
    table, meta = new_table("newer"), new_table("newer_meta")
    await driver(tableName=table, metadataTableName=meta)
    await sql.execute(f'UPDATE "{meta}" SET value = %s', ("99",))
    with pytest.raises(ConfigurationError, match="upgrade mechakit"):
        await driver(tableName=table, metadataTableName=meta)


# --- storage and ETags --------------------------------------------------------------------


async def test_json_is_stored_as_jsonb_and_bytes_as_bytea(driver: Driver, sql: Any) -> None:
    table = new_table("layout")
    store = await driver(tableName=table)
    await store.bulk_set([SetRequest("doc", {"a": [1, 2]}), SetRequest("blob", b"\x00\xff")])
    found = await rows(sql, f'SELECT key, value, value_bytes FROM "{table}" ORDER BY key')
    assert found == [("test-app||blob", None, b"\x00\xff"), ("test-app||doc", {"a": [1, 2]}, None)]


async def test_etags_are_never_reused_even_after_delete_and_recreate(driver: Driver) -> None:
    store = await driver()
    key = new_key("reuse")
    seen = set()
    for _ in range(3):
        await store.set(SetRequest(key, "v"))
        item = await store.get(GetRequest(key))
        seen.add(item.etag)
        await store.delete(DeleteRequest(key))
    assert len(seen) == 3


@pytest.mark.parametrize(
    "etag", ["-2", "0", " 2", "2.0", "\u0662", "abc", "9223372036854775808", "1" * 20]
)
async def test_etags_other_than_positive_ascii_integers_are_invalid_and_nothing_changes(
    driver: Driver, etag: str
) -> None:
    store = await driver()
    key = new_key("invalid")
    await store.set(SetRequest(key, "kept"))
    for request in (SetRequest(key, "changed", etag=etag), DeleteRequest(key, etag=etag)):
        with pytest.raises(ETagError) as caught:
            await (store.set if isinstance(request, SetRequest) else store.delete)(request)
        assert caught.value.kind is ETagErrorKind.INVALID
        assert caught.value.key == key and "state.postgresql 'test'" in str(caught.value)
    assert (await store.get(GetRequest(key))).value == "kept"


async def test_transaction_checks_see_the_earlier_operations_of_the_same_transaction(
    driver: Driver,
) -> None:
    store = await driver()
    key = new_key("chain")
    await store.set(SetRequest(key, 1))
    etag = (await store.get(GetRequest(key))).etag
    with pytest.raises(ETagError) as caught:
        await store.transact([SetRequest(key, 2, etag=etag), SetRequest(key, 3, etag=etag)])
    assert caught.value.kind is ETagErrorKind.MISMATCH
    assert (await store.get(GetRequest(key))).value == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nul \x00 inside", {"k\x00": 1}])
async def test_values_jsonb_cannot_hold_are_refused_and_fail_the_batch(
    driver: Driver, value: Any
) -> None:
    store = await driver()
    bad, good = new_key("bad"), new_key("good")
    with pytest.raises(InvalidRequestError) as caught:
        await store.set(SetRequest(bad, value))
    # NaN and infinities are refused for every store (not JSON); NULs by this one (jsonb).
    assert caught.value.key == bad
    assert "jsonb" in caught.value.reason or "not JSON serialisable" in caught.value.reason
    with pytest.raises(BulkError) as bulk:
        await store.bulk_set([SetRequest(bad, value), SetRequest(good, "fine")])
    assert set(bulk.value.errors) == {bad}
    # An invalid item refuses the whole batch: nothing is written.
    assert await store.get(GetRequest(bad)) is None
    assert await store.get(GetRequest(good)) is None


async def test_text_that_merely_mentions_nan_or_escapes_round_trips(driver: Driver) -> None:
    store = await driver()
    key, value = new_key("lookalike"), {"NaN": "Infinity", "s": "\\u0000 is not a NUL"}
    await store.set(SetRequest(key, value))
    assert (await store.get(GetRequest(key))).value == value


async def test_expired_rows_are_deleted_by_the_periodic_cleanup(driver: Driver, sql: Any) -> None:
    table = new_table("cleanup")
    store = await driver(tableName=table, cleanupInterval="1s")
    await store.set(SetRequest("short", "v", metadata={"ttlInSeconds": "1"}))
    await store.set(SetRequest("long", "v"))

    async def purged() -> None:
        while True:
            if not await rows(sql, f"SELECT key FROM \"{table}\" WHERE key LIKE '%%short'"):
                return
            await asyncio.sleep(0.1)

    await asyncio.wait_for(purged(), 5)
    assert await rows(sql, f'SELECT key FROM "{table}"') == [("test-app||long",)]


async def test_close_stops_the_periodic_cleanup(driver: Driver) -> None:
    store = await driver(tableName=new_table("cleanup"), cleanupInterval="1s")
    tasks = [t for t in asyncio.all_tasks() if t.get_name().endswith(" TTL cleanup")]
    assert len(tasks) == 1
    await store.close()
    assert tasks[0].done()


# --- query --------------------------------------------------------------------------------

PEOPLE = {
    "ann": {"name": "Ann", "age": 31, "org": {"dept": "ops"}, "tags": ["a"]},
    "bob": {"name": "Bob", "age": 45, "org": {"dept": "dev"}},
    "cy": {"name": "Cy", "age": 22, "org": {"dept": "dev"}},
    "dee": {"name": "Dee", "age": "unknown", "org": {"dept": "ops"}},
}


@pytest_asyncio.fixture
async def people(driver: Driver) -> Any:
    """A store on a fresh table holding PEOPLE, a binary value, and another component's key."""
    table = new_table("query")
    store = await driver(tableName=table)
    await store.bulk_set([SetRequest(k, v) for k, v in PEOPLE.items()])
    await store.set(SetRequest("blob", b"\x01"))
    other = await driver(name="other", tableName=table, keyPrefix="name")
    await other.set(SetRequest("eve", {"name": "Eve", "age": 31, "org": {"dept": "ops"}}))
    return store


async def keys_of(store: Any, body: dict[str, Any]) -> list[str]:
    response = await store.query(Query.from_dict(body))
    return [item.key for item in response.results]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"filter": {"EQ": {"org.dept": "dev"}}}, ["bob", "cy"]),
        ({"filter": {"EQ": {"value.age": 31}}}, ["ann"]),
        ({"filter": {"NEQ": {"org.dept": "dev"}}}, ["ann", "dee"]),
        ({"filter": {"IN": {"name": ["Cy", "Ann", "Zed"]}}}, ["ann", "cy"]),
        ({"filter": {"GT": {"age": 30}}}, ["ann", "bob"]),
        ({"filter": {"GTE": {"age": 45}}}, ["bob"]),
        ({"filter": {"LT": {"age": 31}}}, ["cy"]),
        ({"filter": {"LTE": {"age": 31}}}, ["ann", "cy"]),
        (
            {
                "filter": {
                    "OR": [
                        {"AND": [{"EQ": {"org.dept": "ops"}}, {"GT": {"age": 30}}]},
                        {"EQ": {"name": "Cy"}},
                    ]
                }
            },
            ["ann", "cy"],
        ),
        (
            {"sort": [{"key": "age", "order": "DESC"}], "filter": {"LT": {"age": 100}}},
            ["bob", "ann", "cy"],
        ),
    ],
)
async def test_query_filters_json_values_of_this_components_keys(
    people: Any, body: dict[str, Any], expected: list[str]
) -> None:
    assert await keys_of(people, body) == expected


async def test_query_pages_follow_the_token_until_exhausted(people: Any) -> None:
    seen: list[str] = []
    token = None
    for _ in range(5):
        page: dict[str, Any] = {"limit": 3}
        if token:
            page["token"] = token
        response = await people.query(Query.from_dict({"sort": [{"key": "name"}], "page": page}))
        seen += [item.key for item in response.results]
        token = response.token
        if token is None:
            break
    assert seen == ["ann", "bob", "cy", "dee"]
    response = await people.query(Query.from_dict({"filter": {"EQ": {"name": "Ann"}}}))
    assert response.results[0].value == PEOPLE["ann"]
    assert response.results[0].etag == (await people.get(GetRequest("ann"))).etag


async def test_query_values_are_bound_not_spliced_into_sql(people: Any) -> None:
    sneaky = "x' OR '1'='1"
    assert await keys_of(people, {"filter": {"EQ": {"name": sneaky}}}) == []
    assert await keys_of(people, {"filter": {"EQ": {"name') OR ('1'='1": "Ann"}}}) == []


@pytest.mark.parametrize(
    ("query", "words"),
    [
        (Query(filter=Filter("LIKE", key="name", value="A%")), ["'LIKE'", "supported"]),  # type: ignore[arg-type]
        (Query(filter=Filter("EQ", key="org..dept", value=1)), ["'org..dept'"]),
        (Query(token="not-a-token"), ["'not-a-token'"]),
    ],
)
async def test_bad_queries_are_invalid_requests_naming_the_component(
    people: Any, query: Query, words: list[str]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await people.query(query)
    assert "state.postgresql 'test'" in str(caught.value)
    assert all(word in str(caught.value) for word in words)


# --- configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize("metadata", [{}, {"connectionString": ""}, {"connectionString": "  "}])
async def test_missing_connection_string_names_component_and_field(
    metadata: dict[str, str],
) -> None:
    store = default_registry().create("state.postgresql")
    with pytest.raises(MetadataError) as caught:
        await store.init(ComponentMetadata("test", "state.postgresql", metadata))
    assert caught.value.field == "connectionString"
    assert "state.postgresql 'test'" in str(caught.value)
    assert "'connectionString' is required" in str(caught.value)


async def test_malformed_connection_string_is_refused_without_echoing_it(driver: Driver) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(connectionString="host=localhost password=hunter2 oops")
    assert caught.value.field == "connectionString"
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("table", ["state; DROP TABLE x", "1state", "a.b.c", "x" * 49, 'st"ate'])
async def test_table_names_that_are_not_identifiers_are_refused(driver: Driver, table: str) -> None:
    with pytest.raises(MetadataError) as caught:
        await driver(tableName=table)
    assert caught.value.field == "tableName"


async def test_unreachable_server_fails_init_as_retriable_naming_the_host(driver: Driver) -> None:
    with pytest.raises(ConnectionFailedError) as caught:
        await driver(connectionString="postgresql://postgres:secret@127.0.0.1:1/db", timeout="3s")
    assert caught.value.retriable and caught.value.field == "connectionString"
    assert "127.0.0.1:1" in str(caught.value) and "secret" not in str(caught.value)


async def test_a_missing_database_is_a_configuration_error(
    driver: Driver, postgres_server: BackendInfo
) -> None:
    values = postgres_server.values
    url = f"postgresql://{values['user']}@{values['host']}:{values['port']}/no_such_db_{uuid.uuid4().hex[:6]}"
    with pytest.raises(MetadataError) as caught:
        await driver(connectionString=url)
    assert not caught.value.retriable and "no_such_db" in str(caught.value)


# --- faults -------------------------------------------------------------------------------


@pytest.mark.fault
async def test_restart_gives_retriable_connection_errors_never_etag_errors_then_recovers(
    driver: Driver, postgres_server: BackendInfo
) -> None:
    """Only writes that cannot conflict are used, so any ETagError would be a misreport."""
    if postgres_server.restart is None:
        pytest.skip(f"the PostgreSQL server ({postgres_server.source}) cannot be restarted here")
    store = await driver(timeout="2s", maxConns="4")
    errors: list[Exception] = []

    async def one_round() -> None:
        fresh = new_key("outage")
        await store.set(SetRequest(fresh, "first", options=FIRST_WRITE))
        etag = (await store.get(GetRequest(fresh))).etag
        await store.transact(
            [SetRequest(new_key("tx"), 1, options=FIRST_WRITE), DeleteRequest(fresh, etag=etag)]
        )

    await asyncio.gather(*(one_round() for _ in range(4)))  # the pool holds live connections
    restart = asyncio.create_task(asyncio.to_thread(postgres_server.restart))
    while not restart.done():
        try:
            await one_round()
        except Exception as exc:
            errors.append(exc)
            await asyncio.sleep(0.005)
    await restart

    async def recovered() -> None:
        while True:
            try:
                await one_round()
                return
            except ConnectionFailedError as exc:
                errors.append(exc)
                await asyncio.sleep(0.05)

    await asyncio.wait_for(recovered(), 15)
    assert errors, "no operation failed though every pooled connection was cut"
    assert not [e for e in errors if isinstance(e, ETagError)]
    assert all(isinstance(e, ConnectionFailedError) and e.retriable for e in errors), errors
    key = new_key("after")
    await store.set(SetRequest(key, "back"))
    etag = (await store.get(GetRequest(key))).etag
    await store.set(SetRequest(key, "again", etag=etag))
    assert (await store.get(GetRequest(key))).value == "again"
