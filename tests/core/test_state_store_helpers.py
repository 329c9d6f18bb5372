"""What StateStore gives every driver: key prefixes, checked writes, bulk get assembly and
the periodic cleanup of expired items, owned by the component and stopped by close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    ComponentNotOpenError,
    ConnectionFailedError,
    ETagErrorKind,
    InvalidRequestError,
)
from mechakit.core.metadata import Duration
from mechakit.core.state import (
    TTL_EXPIRE_TIME,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateItem,
    StateSettings,
    StateStore,
    cleanup_interval_setting,
    ttl_metadata,
)


class CountingSettings(StateSettings):
    cleanup_interval: Duration = cleanup_interval_setting(timedelta(hours=1), example="1h")


class CountingStore(StateStore[CountingSettings]):
    """Counts purges; the first one fails as a backend outage would."""

    def __init__(self) -> None:
        super().__init__()
        self.purges = 0
        self.purged_three_times = asyncio.Event()
        self.items: dict[str, StateItem] = {}

    async def open(self) -> None:
        self.clean_expired_every(self.settings.cleanup_interval, self.purge)

    async def purge(self) -> None:
        self.purges += 1
        if self.purges == 3:
            self.purged_three_times.set()
        if self.purges == 1:
            raise ConnectionFailedError("backend down", component=self.label)

    async def get(self, request: GetRequest) -> StateItem | None:
        return self.items.get(self.stored_key(request.key))

    async def set(self, request: SetRequest) -> None:
        op = self.prepare(request)
        self.items[op.stored_key] = StateItem(request.key, request.value)

    async def delete(self, request: DeleteRequest) -> None:
        self.items.pop(self.prepare(request).stored_key, None)


async def open_store(**properties: str) -> CountingStore:
    store = CountingStore()
    await store.init(ComponentMetadata("counts", "state.counting", properties, app_id="app"))
    return store


async def test_the_key_prefix_follows_the_key_prefix_setting() -> None:
    assert (await open_store()).stored_key("k") == "app||k"
    assert (await open_store(keyPrefix="name")).stored_key("k") == "counts||k"
    assert (await open_store(keyPrefix="none")).stored_key("k") == "k"


async def test_an_empty_key_is_an_invalid_request_naming_the_component() -> None:
    store = await open_store()
    with pytest.raises(InvalidRequestError, match="state.counting 'counts': the key must not"):
        store.stored_key("")


async def test_a_bad_ttl_names_the_key_and_the_field() -> None:
    store = await open_store()
    with pytest.raises(InvalidRequestError) as caught:
        store.prepare(SetRequest("k", 1, metadata={"ttlInSeconds": "soon"}))
    assert (caught.value.key, caught.value.field) == ("k", "ttlInSeconds")


async def test_bulk_get_stored_assembles_entries_in_request_order() -> None:
    store = await open_store()

    async def fetch(keys: list[str]) -> Mapping[str, StateItem | Exception]:
        assert keys == ["app||a", "app||b", "app||c"]
        return {"app||a": StateItem("a", 1, "7"), "app||c": ConnectionFailedError("lost")}

    requests = [GetRequest(k) for k in ("a", "b", "", "c", "a")]
    entries = await store.bulk_get_stored(requests, fetch)
    assert [(e.key, e.found, e.value, e.error) for e in entries] == [
        ("a", True, 1, None),
        ("b", False, None, None),
        ("", False, None, "the key must not be empty"),
        ("c", False, None, "lost"),
        ("a", True, 1, None),
    ]


async def test_bulk_operations_on_a_closed_store_fail_as_not_open_not_per_key() -> None:
    store = await open_store()
    await store.close()
    with pytest.raises(ComponentNotOpenError):
        await store.bulk_set([SetRequest("a", 1), SetRequest("b", 2)])
    with pytest.raises(ComponentNotOpenError):
        await store.bulk_get([GetRequest("a")])


async def test_the_cleanup_runs_every_interval_and_survives_a_failed_purge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = await open_store(cleanupInterval="10ms")
    await asyncio.wait_for(store.purged_three_times.wait(), 5)
    assert "TTL cleanup failed, will retry: backend down" in caplog.text
    await store.close()


async def test_close_stops_the_cleanup() -> None:
    store = await open_store(cleanupInterval="10ms")
    await asyncio.sleep(0.05)
    await store.close()
    purges = store.purges
    await asyncio.sleep(0.05)
    assert store.purges == purges
    assert not [t for t in asyncio.all_tasks() if t.get_name().endswith("TTL cleanup")]


async def test_a_cleanup_interval_of_zero_starts_no_task() -> None:
    store = await open_store(cleanupInterval="0")
    assert not [t for t in asyncio.all_tasks() if t.get_name().endswith("TTL cleanup")]
    await store.close()


@pytest.fixture(autouse=True)
def _warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


async def test_every_store_words_a_failed_etag_and_a_first_write_conflict_alike() -> None:
    store = await open_store()
    mismatch, conflict = store.etag_mismatch("k"), store.etag_mismatch("k", first_write=True)
    assert (mismatch.kind, mismatch.key, mismatch.component) == (
        ETagErrorKind.MISMATCH,
        "k",
        "state.counting 'counts'",
    )
    assert conflict.kind is ETagErrorKind.MISMATCH
    assert "already exists and first-write was requested without an ETag" in conflict.reason


def test_ttl_metadata_takes_epoch_seconds_or_a_datetime() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    expected = {TTL_EXPIRE_TIME: "2026-01-02T03:04:05Z"}
    assert ttl_metadata(when) == expected
    assert ttl_metadata(when.timestamp()) == expected
    assert ttl_metadata(None) == {}
