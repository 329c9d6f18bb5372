"""state.sqlite beyond the conformance suite: files, processes, locks, schema, cleanup."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mechakit.components.state.sqlite import SQLiteStateStore
from mechakit.core import (
    BulkError,
    ComponentMetadata,
    ConfigurationError,
    ConnectionFailedError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    MetadataError,
    OperationTimeoutError,
)
from mechakit.core.errors import ComponentNotOpenError
from mechakit.core.state import TTL_EXPIRE_TIME, DeleteRequest, GetRequest, SetRequest

Factory = Callable[..., Awaitable[SQLiteStateStore]]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state.db")


@pytest.fixture
async def make_store(db: str) -> AsyncIterator[Factory]:
    made: list[SQLiteStateStore] = []

    async def make(**properties: str) -> SQLiteStateStore:
        store = SQLiteStateStore()
        await store.init(
            ComponentMetadata(
                "sqlite", "state.sqlite", {"connectionString": db, **properties}, app_id="app"
            )
        )
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def eventually(check: Callable[[], bool], within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"condition still false after {within:g}s")
        await asyncio.sleep(0.05)


def raw_rows(db: str, table: str = "state") -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute(f'SELECT key, etag FROM "{table}"').fetchall())


async def test_data_survives_closing_and_reopening_the_file(make_store: Factory) -> None:
    store = await make_store()
    await store.set(SetRequest("doc", {"n": 1}))
    await store.set(SetRequest("blob", b"\x00\xff", metadata={"ttlInSeconds": "60"}))
    before = [await store.get(GetRequest(k)) for k in ("doc", "blob")]
    await store.close()

    reopened = await make_store()
    after = [await reopened.get(GetRequest(k)) for k in ("doc", "blob")]
    assert after == before
    assert after[1] is not None
    assert TTL_EXPIRE_TIME in after[1].metadata


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from mechakit.components.state.sqlite import SQLiteStateStore
    from mechakit.core import ComponentMetadata, ETagError, ETagErrorKind
    from mechakit.core.state import GetRequest, SetRequest

    db, key, workers, increments, ready, go = sys.argv[1:]

    async def main() -> None:
        store = SQLiteStateStore()
        metadata = {"connectionString": db, "busyTimeout": "10s", "timeout": "60s"}
        await store.init(ComponentMetadata("s", "state.sqlite", metadata, app_id="app"))
        Path(ready).touch()
        deadline = time.monotonic() + 30
        while not Path(go).exists():
            if time.monotonic() > deadline:
                raise SystemExit("never told to go")
            await asyncio.sleep(0.01)
        done = 0

        async def worker() -> None:
            nonlocal done
            for _ in range(int(increments)):
                while True:
                    item = await store.get(GetRequest(key))
                    try:
                        await store.set(SetRequest(key, item.value + 1, etag=item.etag))
                    except ETagError as exc:
                        assert exc.kind is ETagErrorKind.MISMATCH
                        continue
                    done += 1
                    break

        await asyncio.gather(*(worker() for _ in range(int(workers))))
        await store.close()
        print(done)

    asyncio.run(main())
    """
)


async def test_two_processes_incrementing_with_etags_lose_no_update(
    make_store: Factory, db: str, tmp_path: Path
) -> None:
    store = await make_store()
    await store.set(SetRequest("counter", 0))
    workers, increments = 3, 40
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(2)]
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            db,
            "counter",
            str(workers),
            str(increments),
            str(ready),
            str(go),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for ready in readies
    ]
    try:
        await eventually(lambda: all(r.exists() for r in readies), within=30)
        go.touch()
        outputs = [await asyncio.wait_for(child.communicate(), 60) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()
    successes = sum(int(out) for out, _ in outputs)
    assert successes == 2 * workers * increments
    item = await store.get(GetRequest("counter"))
    assert item is not None
    assert item.value == successes


async def test_keys_are_stored_with_the_app_id_prefix_in_the_named_table(
    make_store: Factory, db: str
) -> None:
    prefixed = await make_store(tableName="orders")
    bare = await make_store(tableName="orders", keyPrefix="none")
    await prefixed.set(SetRequest("k", 1))
    await bare.set(SetRequest("k", 2))
    assert set(raw_rows(db, "orders")) == {"app||k", "k"}
    item = await prefixed.get(GetRequest("k"))
    assert item is not None
    assert (item.key, item.value) == ("k", 1)


@pytest.mark.parametrize("field", ["tableName", "metadataTableName"])
@pytest.mark.parametrize("name", ["state; DROP TABLE x", "1state", "my-table", ""])
async def test_a_table_name_that_is_not_an_identifier_names_the_field(
    make_store: Factory, field: str, name: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        await make_store(**{field: name})
    assert caught.value.field == field


@pytest.mark.parametrize("connection", [":memory:", "file:{tmp}/uri.db?mode=rwc", "{tmp}/plain.db"])
async def test_paths_file_uris_and_memory_databases_open(
    make_store: Factory, tmp_path: Path, connection: str
) -> None:
    store = await make_store(connectionString=connection.format(tmp=tmp_path))
    await store.set(SetRequest("k", "v"))
    item = await store.get(GetRequest("k"))
    assert item is not None
    assert item.value == "v"
    await store.ping()


async def test_an_unopenable_file_is_a_retriable_connection_error_at_init(
    make_store: Factory, tmp_path: Path
) -> None:
    with pytest.raises(ConnectionFailedError) as caught:
        await make_store(connectionString=str(tmp_path / "missing-dir" / "state.db"))
    assert caught.value.retriable
    assert caught.value.field == "connectionString"


async def test_the_file_uses_wal_unless_disabled(make_store: Factory, tmp_path: Path) -> None:
    await make_store()
    plain = str(tmp_path / "plain.db")
    await make_store(connectionString=plain, disableWAL="true")
    with sqlite3.connect(str(tmp_path / "state.db")) as wal, sqlite3.connect(plain) as journal:
        assert wal.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert journal.execute("PRAGMA journal_mode").fetchone() == ("delete",)


async def test_a_locked_database_is_a_retriable_connection_error_not_an_etag_error(
    make_store: Factory, db: str
) -> None:
    store = await make_store(busyTimeout="100ms")
    await store.set(SetRequest("k", "before"))
    item = await store.get(GetRequest("k"))
    assert item is not None
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(ConnectionFailedError) as caught_set:
            await store.set(SetRequest("k", "after", etag=item.etag))
        with pytest.raises(ConnectionFailedError) as caught_delete:
            await store.delete(DeleteRequest("k"))
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    for caught in (caught_set, caught_delete):
        assert not isinstance(caught.value, ETagError)
        assert caught.value.retriable
        assert caught.value.key == "k"
    await store.set(SetRequest("k", "after", etag=item.etag))


async def test_an_operation_longer_than_timeout_fails_with_a_timeout(
    make_store: Factory, db: str
) -> None:
    store = await make_store(busyTimeout="5s", timeout="200ms")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationTimeoutError) as caught:
            await asyncio.wait_for(store.set(SetRequest("k", "v")), 3)
        assert caught.value.retriable
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await store.ping()


async def test_periodic_cleanup_deletes_expired_rows(make_store: Factory, db: str) -> None:
    store = await make_store(cleanupInterval="200ms")
    await store.set(SetRequest("short", 1, metadata={"ttlInSeconds": "1"}))
    await store.set(SetRequest("kept", 2))
    await eventually(lambda: "app||short" not in raw_rows(db), within=3)
    assert set(raw_rows(db)) == {"app||kept"}


async def test_an_etag_is_never_reused_after_delete_and_rewrite(make_store: Factory) -> None:
    store = await make_store()
    await store.set(SetRequest("k", 1))
    old = await store.get(GetRequest("k"))
    assert old is not None
    await store.delete(DeleteRequest("k"))
    await store.set(SetRequest("k", 2))
    with pytest.raises(ETagError) as caught:
        await store.set(SetRequest("k", 3, etag=old.etag))
    assert caught.value.kind is ETagErrorKind.MISMATCH


@pytest.mark.parametrize("etag", ["-1", "1.0", "\u0661", str(2**63), "x"])
async def test_etags_outside_the_integer_format_are_invalid(make_store: Factory, etag: str) -> None:
    store = await make_store()
    await store.set(SetRequest("k", 1))
    with pytest.raises(ETagError) as caught:
        await store.delete(DeleteRequest("k", etag=etag))
    assert caught.value.kind is ETagErrorKind.INVALID


async def test_bulk_set_reports_bad_values_and_ttls_per_key_and_writes_nothing(
    make_store: Factory,
) -> None:
    store = await make_store()
    with pytest.raises(BulkError) as caught:
        await store.bulk_set(
            [
                SetRequest("unserialisable", object()),
                SetRequest("bad-ttl", 1, metadata={"ttlInSeconds": "soon"}),
                SetRequest("fine", 3),
            ]
        )
    assert set(caught.value.errors) == {"unserialisable", "bad-ttl"}
    assert all(isinstance(e, InvalidRequestError) for e in caught.value.errors.values())
    assert await store.get(GetRequest("bad-ttl")) is None
    assert await store.get(GetRequest("fine")) is None


async def test_bulk_get_reads_many_keys_in_request_order(make_store: Factory) -> None:
    store = await make_store()
    keys = [f"k{i}" for i in range(1200)]
    await store.bulk_set([SetRequest(k, i) for i, k in enumerate(keys)])
    items = await store.bulk_get([GetRequest(k) for k in [*reversed(keys), "missing", "k0"]])
    assert [i.key for i in items] == [*reversed(keys), "missing", "k0"]
    assert [i.value for i in items[:3]] == [1199, 1198, 1197]
    assert (items[-2].found, items[-1].found, items[-1].value) == (False, True, 0)


async def test_a_table_from_a_newer_schema_is_refused(make_store: Factory, db: str) -> None:
    await (await make_store()).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE metadata SET value = '99' WHERE key = 'schema-version:state'")
    with pytest.raises(ConfigurationError, match="upgrade mechakit"):
        await make_store()


async def test_close_is_idempotent_and_later_calls_fail_clearly(make_store: Factory) -> None:
    store = await make_store()
    await store.close()
    await store.close()
    with pytest.raises(ComponentNotOpenError, match="closed"):
        await store.get(GetRequest("k"))


def cleanup_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "TTL cleanup" in t.get_name() and not t.done()]


async def test_expired_rows_are_deleted_by_the_periodic_cleanup(
    make_store: Factory, db: str
) -> None:
    store = await make_store(cleanupInterval="100ms")
    await store.set(SetRequest("short", "v", metadata={"ttlInSeconds": "1"}))
    await store.set(SetRequest("long", "v"))
    await eventually(lambda: list(raw_rows(db)) == ["app||long"], within=5)


async def test_close_stops_the_periodic_cleanup(make_store: Factory) -> None:
    store = await make_store(cleanupInterval="1s")
    assert [t.get_name() for t in cleanup_tasks()] == ["state.sqlite 'sqlite' TTL cleanup"]
    await store.close()
    assert cleanup_tasks() == []


async def test_cleanup_interval_zero_runs_no_task(make_store: Factory) -> None:
    await make_store(cleanupInterval="0")
    assert cleanup_tasks() == []
