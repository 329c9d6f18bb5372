"""PostgreSQL drivers when the server applied a write but its answer was lost.

A proxy between the driver and a real server forwards the statement and drops the answer
(then closes the connection, or stays silent until the timeout). Nothing may run the
statement again: a conditional write would then find itself and report a false conflict.
The caller must get a retriable error saying the outcome is unknown, never an
``ETagError``, and the server must hold the write exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio
from lossy_proxy import LossyProxy, Mode

from mechakit.conformance.backends import BackendInfo
from mechakit.core.bindings import InvokeRequest
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    ConnectionFailedError,
    ETagError,
    MechakitError,
    OperationTimeoutError,
)
from mechakit.core.registry import default_registry
from mechakit.core.state import (
    Concurrency,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateOptions,
)

pytest_plugins = ["postgres_server"]  # fixture postgres_server

pytest.importorskip("psycopg")

Driver = Callable[..., Awaitable[Any]]
FIRST_WRITE = StateOptions(concurrency=Concurrency.FIRST_WRITE)


def new_key(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def proxy(postgres_server: BackendInfo) -> AsyncIterator[LossyProxy]:
    values = postgres_server.values
    async with LossyProxy(values["host"], int(values["port"])) as made:
        yield made


@pytest_asyncio.fixture
async def driver(postgres_server: BackendInfo, proxy: LossyProxy) -> AsyncIterator[Driver]:
    """``await driver(type, **metadata)``: a component connected through the proxy."""
    parts = urlsplit(postgres_server.values["url"])
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    # No TLS, so that the proxy can see which statement a request carries.
    url = urlunsplit(parts._replace(netloc=netloc, query="sslmode=disable"))
    made: list[Any] = []

    async def make(type_: str = "state.postgresql", **metadata: str) -> Any:
        component = default_registry().create(type_)
        properties = {"connectionString": url, **metadata}
        await component.init(
            ComponentMetadata(name="lost", type=type_, properties=properties, app_id="test-app")
        )
        made.append(component)
        return component

    yield make
    for component in reversed(made):
        await component.close()


def assert_outcome_unknown(error: BaseException, mode: Mode) -> None:
    """A retriable error that says the write may or may not have been applied."""
    assert not isinstance(error, ETagError), error
    assert isinstance(error, ConnectionFailedError), error
    if mode == "stall":
        assert isinstance(error, OperationTimeoutError), error
    assert error.retriable
    assert "may or may not" in str(error), error


MODES = pytest.mark.parametrize("mode", ["close", "stall"])


@MODES
async def test_an_etag_write_whose_answer_is_lost_is_outcome_unknown_and_applied_once(
    driver: Driver, proxy: LossyProxy, mode: Mode
) -> None:
    store = await driver(timeout="1s")
    key = new_key("etag")
    await store.set(SetRequest(key, "v1"))
    etag = (await store.get(GetRequest(key))).etag
    proxy.lose_reply(mode, b"UPDATE")
    with pytest.raises(MechakitError) as caught:
        await store.set(SetRequest(key, "v2", etag=etag))
    assert proxy.lost == 1
    assert_outcome_unknown(caught.value, mode)
    stored = await store.get(GetRequest(key))
    assert stored.value == "v2"
    assert int(stored.etag) > int(etag)


@MODES
async def test_a_first_write_whose_answer_is_lost_is_outcome_unknown_and_applied_once(
    driver: Driver, proxy: LossyProxy, mode: Mode
) -> None:
    store = await driver(timeout="1s")
    key = new_key("first")
    proxy.lose_reply(mode, b"INSERT")
    with pytest.raises(MechakitError) as caught:
        await store.set(SetRequest(key, "mine", options=FIRST_WRITE))
    assert proxy.lost == 1
    assert_outcome_unknown(caught.value, mode)
    assert (await store.get(GetRequest(key))).value == "mine"


async def test_an_etag_delete_whose_answer_is_lost_is_outcome_unknown(
    driver: Driver, proxy: LossyProxy
) -> None:
    store = await driver()
    key = new_key("delete")
    await store.set(SetRequest(key, "v1"))
    etag = (await store.get(GetRequest(key))).etag
    proxy.lose_reply("close", b"DELETE")
    with pytest.raises(MechakitError) as caught:
        await store.delete(DeleteRequest(key, etag=etag))
    assert_outcome_unknown(caught.value, "close")
    assert await store.get(GetRequest(key)) is None


@MODES
async def test_a_transaction_whose_commit_answer_is_lost_is_outcome_unknown(
    driver: Driver, proxy: LossyProxy, mode: Mode
) -> None:
    store = await driver(timeout="1s")
    old, new = new_key("tx-old"), new_key("tx-new")
    await store.set(SetRequest(old, "v1"))
    etag = (await store.get(GetRequest(old))).etag
    proxy.lose_reply(mode, b"COMMIT")
    with pytest.raises(MechakitError) as caught:
        await store.transact(
            [SetRequest(old, "v2", etag=etag), SetRequest(new, "n", options=FIRST_WRITE)]
        )
    assert proxy.lost == 1
    assert_outcome_unknown(caught.value, mode)
    assert (await store.get(GetRequest(old))).value == "v2"
    assert (await store.get(GetRequest(new))).value == "n"


async def test_a_bulk_set_whose_commit_answer_is_lost_fails_whole_as_outcome_unknown(
    driver: Driver, proxy: LossyProxy
) -> None:
    store = await driver()
    keys = [new_key("bulk") for _ in range(3)]
    proxy.lose_reply("close", b"COMMIT")
    with pytest.raises(MechakitError) as caught:
        await store.bulk_set([SetRequest(k, i, options=FIRST_WRITE) for i, k in enumerate(keys)])
    assert_outcome_unknown(caught.value, "close")
    assert [item.value for item in await store.bulk_get([GetRequest(k) for k in keys])] == [0, 1, 2]


async def test_a_read_whose_answer_is_lost_is_a_plain_retriable_error(
    driver: Driver, proxy: LossyProxy
) -> None:
    store = await driver()
    proxy.lose_reply("close", b"SELECT")
    with pytest.raises(ConnectionFailedError) as caught:
        await store.get(GetRequest(new_key("read")))
    assert caught.value.retriable
    assert "may or may not" not in str(caught.value)


@MODES
async def test_binding_exec_whose_answer_is_lost_is_outcome_unknown_and_runs_once(
    driver: Driver, proxy: LossyProxy, mode: Mode
) -> None:
    binding = await driver("bindings.postgresql", timeout="1s")
    table = f"t_lost_{uuid.uuid4().hex[:10]}"
    await binding.invoke(
        InvokeRequest("exec", metadata={"sql": f"CREATE TABLE {table} (n int NOT NULL)"})
    )
    proxy.lose_reply(mode, b"INSERT")
    with pytest.raises(MechakitError) as caught:
        await binding.invoke(
            InvokeRequest(
                "exec", metadata={"sql": f"INSERT INTO {table} VALUES ($1)", "params": "[7]"}
            )
        )
    assert proxy.lost == 1
    assert_outcome_unknown(caught.value, mode)
    rows = await binding.invoke(InvokeRequest("query", metadata={"sql": f"SELECT n FROM {table}"}))
    assert rows.data == b"[[7]]"
