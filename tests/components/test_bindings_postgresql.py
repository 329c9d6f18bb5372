"""bindings.postgresql: bound parameters, result shape, request errors, close."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from mechakit.components.bindings.postgresql import PostgreSQLBinding, highest_placeholder
from mechakit.conformance.backends import BackendInfo
from mechakit.core.bindings import InvokeRequest, InvokeResponse
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import ComponentError, InvalidRequestError
from mechakit.core.registry import default_registry

pytest_plugins = ["postgres_server"]  # fixture postgres_server

pytest.importorskip("psycopg")


@pytest_asyncio.fixture
async def binding(postgres_server: BackendInfo) -> AsyncIterator[Any]:
    made = default_registry().create("bindings.postgresql")
    await made.init(
        ComponentMetadata(
            "db", "bindings.postgresql", {"connectionString": postgres_server.values["url"]}
        )
    )
    yield made
    await made.close()


@pytest_asyncio.fixture
async def table(binding: Any) -> str:
    name = f"b_{uuid.uuid4().hex[:10]}"
    await run(binding, "exec", f"CREATE TABLE {name} (id int PRIMARY KEY, name text, tags jsonb)")
    return name


async def run(binding: Any, operation: str, sql: str, *params: Any) -> InvokeResponse:
    metadata = {"sql": sql}
    if params:
        metadata["params"] = json.dumps(list(params))
    response: InvokeResponse = await binding.invoke(InvokeRequest(operation, metadata=metadata))
    return response


def test_the_upstream_name_postgres_is_an_alias() -> None:
    registry = default_registry()
    assert registry.resolve("bindings.postgres") == registry.resolve("bindings.postgresql")
    assert registry.create("bindings.postgres").__class__ is PostgreSQLBinding


async def test_exec_reports_rows_affected(binding: Any, table: str) -> None:
    inserted = await run(
        binding, "exec", f"INSERT INTO {table} (id, name) VALUES ($1, $2), ($3, $4)", 1, "a", 2, "b"
    )
    assert inserted.metadata["rows-affected"] == "2"
    updated = await run(binding, "exec", f"UPDATE {table} SET name = $1 WHERE id > $2", "z", 5)
    assert updated.metadata["rows-affected"] == "0"
    assert {"operation", "sql", "start-time", "end-time", "duration"} <= set(updated.metadata)


async def test_query_returns_one_json_array_of_values_per_row(binding: Any, table: str) -> None:
    await run(
        binding,
        "exec",
        f"INSERT INTO {table} VALUES ($1, $2, $3), ($4, $5, $6)",
        1, "one", {"a": [1, 2]}, 2, None, None,
    )  # fmt: skip
    response = await run(binding, "query", f"SELECT id, name, tags FROM {table} ORDER BY id")
    assert json.loads(response.data) == [[1, "one", {"a": [1, 2]}], [2, None, None]]
    assert response.content_type == "application/json"


async def test_query_encodes_times_numbers_bytes_and_uuids_as_json(binding: Any) -> None:
    response = await run(
        binding,
        "query",
        "SELECT '2024-01-02T03:04:05Z'::timestamptz, 1.50::numeric, 7::numeric, "
        "'\\x0102'::bytea, '00000000-0000-0000-0000-000000000001'::uuid",
    )
    assert json.loads(response.data) == [
        ["2024-01-02T03:04:05+00:00", 1.5, 7, "AQI=", "00000000-0000-0000-0000-000000000001"]
    ]


async def test_an_injection_attempt_in_params_stays_data(binding: Any, table: str) -> None:
    attack = f"x'); DROP TABLE {table}; --"
    await run(binding, "exec", f"INSERT INTO {table} (id, name) VALUES ($1, $2)", 1, attack)
    await run(binding, "query", f"SELECT * FROM {table} WHERE name = $1", "' OR '1'='1")
    response = await run(binding, "query", f"SELECT name FROM {table}")
    assert json.loads(response.data) == [[attack]]


async def test_placeholder_text_inside_literals_and_comments_is_not_a_parameter(
    binding: Any,
) -> None:
    response = await run(binding, "query", "SELECT '$2', $1::text /* $3 */ -- $4", "p")
    assert json.loads(response.data) == [["$2", "p"]]


@pytest.mark.parametrize(
    ("sql", "params"),
    [("SELECT $1::int", []), ("SELECT $1::int", [1, 2]), ("SELECT $1::int + $2", [1])],
)
async def test_a_wrong_number_of_params_is_an_invalid_request_naming_params(
    binding: Any, sql: str, params: list[Any]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await run(binding, "query", sql, *params) if params else await run(binding, "query", sql)
    assert caught.value.field == "params"
    assert "bindings.postgresql 'db'" in str(caught.value)


@pytest.mark.parametrize(
    ("sql", "words"),
    [("SELEC 1", ["syntax error"]), ("SELECT * FROM no_such_table_here", ["no_such_table_here"])],
)
async def test_sql_the_server_rejects_is_an_invalid_request_naming_sql(
    binding: Any, sql: str, words: list[str]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await run(binding, "query", sql)
    assert caught.value.field == "sql" and not caught.value.retriable
    assert all(word in str(caught.value) for word in words)


async def test_a_param_of_the_wrong_type_is_an_invalid_request_naming_params(binding: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await run(binding, "query", "SELECT $1::int", "not a number")
    assert caught.value.field == "params"


@pytest.mark.parametrize("params", ["not json", '{"a": 1}', "3"])
async def test_params_that_are_not_a_json_array_are_refused(binding: Any, params: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await binding.invoke(
            InvokeRequest("query", metadata={"sql": "SELECT $1", "params": params})
        )
    assert caught.value.field == "params"


async def test_a_request_without_sql_names_the_field(binding: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await binding.invoke(InvokeRequest("exec"))
    assert caught.value.field == "sql"


async def test_close_operation_releases_the_pool_and_later_requests_fail(binding: Any) -> None:
    await binding.invoke(InvokeRequest("close"))
    with pytest.raises(ComponentError, match="closed"):
        await run(binding, "query", "SELECT 1")


@pytest.mark.parametrize(
    ("sql", "highest"),
    [
        ("SELECT 1", 0),
        ("SELECT $1, $10", 10),
        ("SELECT '$3', \"$4\", $1", 1),
        ("SELECT E'\\'$5', $2", 2),
        ("SELECT $$ $9 $$, $tag$ $8 $tag$, $1", 1),
        ("SELECT 1 -- $3\n, $2 /* /* $7 */ $6 */", 2),
        ("SELECT a$1 FROM t", 0),
    ],
)
def test_placeholders_are_counted_outside_strings_names_and_comments(
    sql: str, highest: int
) -> None:
    assert highest_placeholder(sql) == highest
