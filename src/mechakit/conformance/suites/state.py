"""Conformance suite for state stores, gated by the features a target declares.

Every test uses fresh random keys, so tests never depend on each other, even on a server
shared by many runs. Undeclared features are checked for absence: ``features()`` must equal
the expected set, and the capability classes must match it.

Target options (``options:`` in the matrix):

- ``bad_etag``: an ETag the store must reject as malformed (``ETagError`` INVALID);
  default ``"not-an-etag"``.
- ``large_value_bytes``: size of the large-value round trip; default 1 MiB.
- ``concurrent_writers``: tasks racing to increment one key with ETags; default 10.
- ``shared_storage``: whether two instances with the same metadata see the same data
  (false for in-process stores); default true. Gates the key-prefix tests.
- ``transaction_keys_share_slot``: the store transacts only on keys of one partition
  (Redis Cluster: one hash slot), so the keys of each transaction test get a common
  ``{hashtag}``; default false.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mechakit.conformance import requires, without
from mechakit.conformance.plugin import ComponentFactory, option
from mechakit.conformance.suites.state_absence import StateAbsenceChecks
from mechakit.conformance.targets import Target
from mechakit.core.errors import (
    BulkError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    NotSupportedError,
)
from mechakit.core.state import (
    TTL_EXPIRE_TIME,
    Concurrency,
    DeleteRequest,
    GetRequest,
    QueryableStore,
    SetRequest,
    StateFeature,
    StateItem,
    StateOptions,
    StateSettings,
    StateStore,
    TransactionalStore,
)

pytestmark = pytest.mark.asyncio

Store = StateStore[Any]
FIRST_WRITE = StateOptions(concurrency=Concurrency.FIRST_WRITE)
WAIT = 10.0
"""Upper bound for anything the suite waits on, so a broken store fails instead of hanging."""

VALUES: dict[str, Any] = {
    "dict": {"name": "order", "n": 3, "nested": {"ok": True, "tags": ["a", "b"]}},
    "list": [1, "two", 3.5, None, {"x": []}],
    "str": "hello",
    "empty-str": "",
    "unicode": "grüße, 日本語, emoji 🚀",
    "int": 42,
    "negative-int": -7,
    "float": 2.5,
    "bool-true": True,
    "bool-false": False,
    "none": None,
    "bytes": b"raw bytes",
    "non-utf8-bytes": bytes(range(256)),
}


def new_key(what: str = "key") -> str:
    return f"conformance-{what}-{uuid.uuid4().hex}"


def transaction_keys(target: Target, *whats: str) -> tuple[str, ...]:
    """Fresh keys for one transaction, in one partition when the target needs that."""
    if not option(target, "transaction_keys_share_slot", False):
        return tuple(new_key(what) for what in whats)
    tag = f"{{tx-{uuid.uuid4().hex[:12]}}}"
    return tuple(f"{tag}-{new_key(what)}" for what in whats)


def bad_etag(target: Target) -> str:
    return str(option(target, "bad_etag", "not-an-etag"))


async def must_get(store: Store, key: str) -> StateItem:
    item = await store.get(GetRequest(key))
    assert item is not None, f"{key!r} should exist"
    return item


async def value_of(store: Store, key: str) -> Any:
    item = await store.get(GetRequest(key))
    return None if item is None else item.value


async def stale_etag(store: Store, key: str) -> str:
    """Write ``key`` twice and return the ETag of the first write (now stale)."""
    await store.set(SetRequest(key, "first"))
    etag = (await must_get(store, key)).etag
    assert etag is not None
    await store.set(SetRequest(key, "second"))
    return etag


async def etag_of_deleted_key(store: Store, key: str) -> str:
    """A well-formed ETag that ``key`` once had; the key no longer exists."""
    await store.set(SetRequest(key, "gone"))
    etag = (await must_get(store, key)).etag
    assert etag is not None
    await store.delete(DeleteRequest(key))
    return etag


async def wait_until_gone(store: Store, key: str, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await store.get(GetRequest(key)) is not None:
        if loop.time() > deadline:
            pytest.fail(f"{key!r} still exists {within:g}s after its TTL was set")
        await asyncio.sleep(0.1)


def expire_time_of(item: StateItem) -> datetime:
    assert TTL_EXPIRE_TIME in item.metadata, f"{item.key!r} should carry {TTL_EXPIRE_TIME}"
    return datetime.fromisoformat(item.metadata[TTL_EXPIRE_TIME].replace("Z", "+00:00"))


class StateSuite(StateAbsenceChecks):
    """Mix into a test class (``class TestState(StateSuite): pass``) to run the suite."""

    category = "state"
    pytestmark = [pytest.mark.asyncio]

    # --- declared features ---------------------------------------------------------

    async def test_features_are_exactly_the_expected_ones(
        self, component: Store, expected_features: frozenset[str]
    ) -> None:
        assert {str(f) for f in component.features()} == set(expected_features)

    async def test_transactional_feature_matches_the_transactional_interface(
        self, component: Store
    ) -> None:
        declared = "TRANSACTIONAL" in {str(f) for f in component.features()}
        assert declared == isinstance(component, TransactionalStore)

    async def test_query_feature_matches_the_query_interface(self, component: Store) -> None:
        declared = "QUERY_API" in {str(f) for f in component.features()}
        assert declared == isinstance(component, QueryableStore)

    async def test_ping_succeeds_or_is_not_supported(self, component: Store) -> None:
        with contextlib.suppress(NotSupportedError):
            await asyncio.wait_for(component.ping(), WAIT)

    # --- values ---------------------------------------------------------------------

    @pytest.mark.parametrize("kind", list(VALUES))
    async def test_value_round_trips(self, component: Store, kind: str) -> None:
        key, value = new_key(kind), VALUES[kind]
        await component.set(SetRequest(key, value))
        item = await must_get(component, key)
        assert item.key == key
        assert item.value == value
        assert type(item.value) is type(value)

    async def test_large_value_round_trips(
        self, component: Store, conformance_target: Target
    ) -> None:
        size = int(option(conformance_target, "large_value_bytes", 1 << 20))
        blob = (bytes(range(256)) * (size // 256 + 1))[:size]
        text = "x" * size
        keys = new_key("large-bytes"), new_key("large-text")
        await component.set(SetRequest(keys[0], blob))
        await component.set(SetRequest(keys[1], text))
        assert await value_of(component, keys[0]) == blob
        assert await value_of(component, keys[1]) == text

    async def test_set_overwrites_the_value(self, component: Store) -> None:
        key = new_key()
        await component.set(SetRequest(key, {"v": 1}))
        await component.set(SetRequest(key, {"v": 2}))
        assert await value_of(component, key) == {"v": 2}

    async def test_get_of_a_missing_key_is_none(self, component: Store) -> None:
        assert await component.get(GetRequest(new_key("missing"))) is None

    async def test_delete_removes_the_key(self, component: Store) -> None:
        key = new_key()
        await component.set(SetRequest(key, "v"))
        await component.delete(DeleteRequest(key))
        assert await component.get(GetRequest(key)) is None

    async def test_deleting_a_missing_key_succeeds(self, component: Store) -> None:
        await component.delete(DeleteRequest(new_key("missing")))

    # --- bulk -----------------------------------------------------------------------

    async def test_bulk_set_then_bulk_get_in_request_order_with_missing_keys(
        self, component: Store
    ) -> None:
        keys = [new_key(f"bulk{i}") for i in range(3)]
        missing = new_key("missing")
        await component.bulk_set([SetRequest(k, {"i": i}) for i, k in enumerate(keys)])
        items = await component.bulk_get([GetRequest(k) for k in [keys[0], missing, *keys[1:]]])
        assert [i.key for i in items] == [keys[0], missing, *keys[1:]]
        by_key = {i.key: i for i in items}
        assert by_key[missing].found is False
        assert by_key[missing].value is None
        assert by_key[missing].error is None
        for i, key in enumerate(keys):
            assert by_key[key].found is True
            assert by_key[key].error is None
            assert by_key[key].value == {"i": i}

    async def test_bulk_delete_removes_every_key(self, component: Store) -> None:
        keys = [new_key(f"bulk{i}") for i in range(3)]
        await component.bulk_set([SetRequest(k, i) for i, k in enumerate(keys)])
        await component.bulk_delete([DeleteRequest(k) for k in [*keys, new_key("missing")]])
        items = await component.bulk_get([GetRequest(k) for k in keys])
        assert [i.found for i in items] == [False, False, False]

    # --- ETags ----------------------------------------------------------------------

    @requires(StateFeature.ETAG)
    async def test_get_returns_an_etag_that_every_write_changes(self, component: Store) -> None:
        key = new_key()
        await component.set(SetRequest(key, 1))
        first = (await must_get(component, key)).etag
        assert first
        await component.set(SetRequest(key, 2))
        second = (await must_get(component, key)).etag
        assert second
        assert second != first

    @requires(StateFeature.ETAG)
    async def test_set_with_the_current_etag_succeeds_and_changes_it(
        self, component: Store
    ) -> None:
        key = new_key()
        await component.set(SetRequest(key, "v1"))
        etag = (await must_get(component, key)).etag
        await component.set(SetRequest(key, "v2", etag=etag))
        item = await must_get(component, key)
        assert item.value == "v2"
        assert item.etag != etag

    @requires(StateFeature.ETAG)
    async def test_stale_etag_is_a_mismatch_and_nothing_changes(self, component: Store) -> None:
        key = new_key()
        etag = await stale_etag(component, key)
        current = await must_get(component, key)
        with pytest.raises(ETagError) as caught:
            await component.set(SetRequest(key, "third", etag=etag))
        assert caught.value.kind is ETagErrorKind.MISMATCH
        after = await must_get(component, key)
        assert (after.value, after.etag) == (current.value, current.etag)

    @requires(StateFeature.ETAG)
    async def test_malformed_etag_is_invalid_and_nothing_changes(
        self, component: Store, conformance_target: Target
    ) -> None:
        key = new_key()
        await component.set(SetRequest(key, "kept"))
        with pytest.raises(ETagError) as caught:
            await component.set(SetRequest(key, "changed", etag=bad_etag(conformance_target)))
        assert caught.value.kind is ETagErrorKind.INVALID
        with pytest.raises(ETagError) as caught_delete:
            await component.delete(DeleteRequest(key, etag=bad_etag(conformance_target)))
        assert caught_delete.value.kind is ETagErrorKind.INVALID
        assert await value_of(component, key) == "kept"

    @requires(StateFeature.ETAG)
    async def test_set_with_an_etag_on_a_missing_key_is_a_mismatch(self, component: Store) -> None:
        key = new_key()
        etag = await etag_of_deleted_key(component, key)
        with pytest.raises(ETagError) as caught:
            await component.set(SetRequest(key, "v", etag=etag))
        assert caught.value.kind is ETagErrorKind.MISMATCH
        assert await component.get(GetRequest(key)) is None

    @requires(StateFeature.ETAG)
    async def test_delete_with_the_current_etag_removes_the_key(self, component: Store) -> None:
        key = new_key()
        await component.set(SetRequest(key, "v"))
        etag = (await must_get(component, key)).etag
        await component.delete(DeleteRequest(key, etag=etag))
        assert await component.get(GetRequest(key)) is None

    @requires(StateFeature.ETAG)
    async def test_delete_with_a_stale_etag_is_a_mismatch_and_keeps_the_key(
        self, component: Store
    ) -> None:
        key = new_key()
        etag = await stale_etag(component, key)
        with pytest.raises(ETagError) as caught:
            await component.delete(DeleteRequest(key, etag=etag))
        assert caught.value.kind is ETagErrorKind.MISMATCH
        assert await value_of(component, key) == "second"

    @requires(StateFeature.ETAG)
    async def test_delete_with_an_etag_on_a_missing_key_is_a_mismatch(
        self, component: Store
    ) -> None:
        key = new_key()
        etag = await etag_of_deleted_key(component, key)
        with pytest.raises(ETagError) as caught:
            await component.delete(DeleteRequest(key, etag=etag))
        assert caught.value.kind is ETagErrorKind.MISMATCH

    @requires(StateFeature.ETAG)
    async def test_bulk_set_with_one_stale_etag_fails_only_that_key(self, component: Store) -> None:
        stale_key, good = new_key("stale"), [new_key("good0"), new_key("good1")]
        etag = await stale_etag(component, stale_key)
        with pytest.raises(BulkError) as caught:
            await component.bulk_set(
                [
                    SetRequest(good[0], "new"),
                    SetRequest(stale_key, "new", etag=etag),
                    SetRequest(good[1], "new"),
                ]
            )
        assert set(caught.value.errors) == {stale_key}
        failure = caught.value.errors[stale_key]
        assert isinstance(failure, ETagError)
        assert failure.kind is ETagErrorKind.MISMATCH
        assert await value_of(component, stale_key) == "second"
        assert [await value_of(component, k) for k in good] == ["new", "new"]

    async def test_bulk_set_with_one_invalid_value_writes_nothing(self, component: Store) -> None:
        good, bad = new_key("good"), new_key("bad")
        with pytest.raises(BulkError) as caught:
            await component.bulk_set([SetRequest(good, "new"), SetRequest(bad, float("nan"))])
        assert set(caught.value.errors) == {bad}
        assert isinstance(caught.value.errors[bad], InvalidRequestError)
        assert await component.get(GetRequest(good)) is None

    @requires(StateFeature.TTL)
    async def test_bulk_set_with_one_invalid_ttl_writes_nothing(self, component: Store) -> None:
        good, bad = new_key("good"), new_key("bad")
        with pytest.raises(BulkError) as caught:
            await component.bulk_set(
                [SetRequest(good, "new"), SetRequest(bad, "v", metadata={"ttlInSeconds": "soon"})]
            )
        assert set(caught.value.errors) == {bad}
        assert await component.get(GetRequest(good)) is None

    @requires(StateFeature.ETAG)
    async def test_bulk_delete_with_one_stale_etag_fails_only_that_key(
        self, component: Store
    ) -> None:
        stale_key, good = new_key("stale"), new_key("good")
        etag = await stale_etag(component, stale_key)
        await component.set(SetRequest(good, "v"))
        with pytest.raises(BulkError) as caught:
            await component.bulk_delete([DeleteRequest(stale_key, etag=etag), DeleteRequest(good)])
        assert set(caught.value.errors) == {stale_key}
        assert await value_of(component, stale_key) == "second"
        assert await component.get(GetRequest(good)) is None

    @requires(StateFeature.ETAG)
    async def test_first_write_without_etag_fails_when_the_key_exists(
        self, component: Store
    ) -> None:
        key = new_key()
        await component.set(SetRequest(key, "first", options=FIRST_WRITE))
        with pytest.raises(ETagError) as caught:
            await component.set(SetRequest(key, "second", options=FIRST_WRITE))
        assert caught.value.kind is ETagErrorKind.MISMATCH
        assert await value_of(component, key) == "first"

    @requires(StateFeature.ETAG)
    async def test_first_write_with_etag_is_a_compare_and_set(self, component: Store) -> None:
        key = new_key()
        etag = await stale_etag(component, key)
        with pytest.raises(ETagError) as caught:
            await component.set(SetRequest(key, "lost", etag=etag, options=FIRST_WRITE))
        assert caught.value.kind is ETagErrorKind.MISMATCH
        current = (await must_get(component, key)).etag
        await component.set(SetRequest(key, "won", etag=current, options=FIRST_WRITE))
        assert await value_of(component, key) == "won"

    @requires(StateFeature.ETAG)
    async def test_first_write_applies_to_its_own_request_only(self, component: Store) -> None:
        key = new_key()
        await component.set(SetRequest(key, "first", options=FIRST_WRITE))
        await component.set(SetRequest(key, "last-write"))
        assert await value_of(component, key) == "last-write"
        await component.delete(DeleteRequest(key))
        await component.set(SetRequest(key, "again", options=FIRST_WRITE))
        assert await value_of(component, key) == "again"

    @requires(StateFeature.ETAG)
    async def test_concurrent_etag_increments_lose_no_update(
        self, component: Store, conformance_target: Target
    ) -> None:
        key, writers = new_key("counter"), int(option(conformance_target, "concurrent_writers", 10))
        await component.set(SetRequest(key, 0))

        async def increment() -> None:
            while True:
                item = await must_get(component, key)
                try:
                    await component.set(SetRequest(key, item.value + 1, etag=item.etag))
                    return
                except ETagError as exc:
                    if exc.kind is not ETagErrorKind.MISMATCH:
                        raise

        await asyncio.wait_for(asyncio.gather(*(increment() for _ in range(writers))), 60)
        assert await value_of(component, key) == writers

    # --- transactions ---------------------------------------------------------------

    @requires(StateFeature.TRANSACTIONAL)
    async def test_transaction_applies_operations_on_one_key_in_order(
        self, component: TransactionalStore[Any], conformance_target: Target
    ) -> None:
        kept, removed = transaction_keys(conformance_target, "kept", "removed")
        await component.transact(
            [
                SetRequest(kept, 1),
                SetRequest(kept, 2),
                DeleteRequest(kept),
                SetRequest(kept, 3),
                SetRequest(removed, 1),
                DeleteRequest(removed),
            ]
        )
        assert await value_of(component, kept) == 3
        assert await component.get(GetRequest(removed)) is None

    @requires(StateFeature.TRANSACTIONAL)
    async def test_transaction_deleting_a_missing_key_succeeds(
        self, component: TransactionalStore[Any], conformance_target: Target
    ) -> None:
        key, missing = transaction_keys(conformance_target, "key", "missing")
        await component.transact([DeleteRequest(missing), SetRequest(key, "v")])
        assert await value_of(component, key) == "v"

    @requires(StateFeature.TRANSACTIONAL, StateFeature.ETAG)
    async def test_transaction_with_current_etags_succeeds(
        self, component: TransactionalStore[Any], conformance_target: Target
    ) -> None:
        updated, removed = transaction_keys(conformance_target, "updated", "removed")
        await component.bulk_set([SetRequest(updated, 1), SetRequest(removed, 1)])
        etags = {
            i.key: i.etag
            for i in await component.bulk_get([GetRequest(updated), GetRequest(removed)])
        }
        await component.transact(
            [
                SetRequest(updated, 2, etag=etags[updated]),
                DeleteRequest(removed, etag=etags[removed]),
            ]
        )
        assert await value_of(component, updated) == 2
        assert await component.get(GetRequest(removed)) is None

    @requires(StateFeature.TRANSACTIONAL, StateFeature.ETAG)
    async def test_failed_etag_check_leaves_every_key_untouched(
        self, component: TransactionalStore[Any], conformance_target: Target
    ) -> None:
        before, stale_key, deleted, created = transaction_keys(
            conformance_target, "before", "stale", "deleted", "created"
        )
        await component.bulk_set([SetRequest(before, "old"), SetRequest(deleted, "old")])
        etag = await stale_etag(component, stale_key)
        with pytest.raises(ETagError) as caught:
            await component.transact(
                [
                    SetRequest(before, "new"),
                    DeleteRequest(deleted),
                    SetRequest(stale_key, "new", etag=etag),
                    SetRequest(created, "new"),
                ]
            )
        assert caught.value.kind is ETagErrorKind.MISMATCH
        assert await value_of(component, before) == "old"
        assert await value_of(component, deleted) == "old"
        assert await value_of(component, stale_key) == "second"
        assert await component.get(GetRequest(created)) is None

    @requires(StateFeature.TRANSACTIONAL, StateFeature.ETAG)
    async def test_failed_first_write_in_a_transaction_leaves_every_key_untouched(
        self, component: TransactionalStore[Any], conformance_target: Target
    ) -> None:
        existing, created = transaction_keys(conformance_target, "existing", "created")
        await component.set(SetRequest(existing, "old"))
        with pytest.raises(ETagError) as caught:
            await component.transact(
                [SetRequest(created, "new"), SetRequest(existing, "new", options=FIRST_WRITE)]
            )
        assert caught.value.kind is ETagErrorKind.MISMATCH
        assert await value_of(component, existing) == "old"
        assert await component.get(GetRequest(created)) is None

    # --- TTL ------------------------------------------------------------------------

    @requires(StateFeature.TTL)
    @pytest.mark.parametrize("ttl", ["0", "-5", "1.5", "soon"])
    async def test_invalid_ttl_is_rejected_and_nothing_is_written(
        self, component: Store, ttl: str
    ) -> None:
        key = new_key()
        with pytest.raises(InvalidRequestError):
            await component.set(SetRequest(key, "v", metadata={"ttlInSeconds": ttl}))
        assert await component.get(GetRequest(key)) is None

    @requires(StateFeature.TTL)
    async def test_get_returns_the_expire_time_of_a_ttl(self, component: Store) -> None:
        key, ttl = new_key(), 60
        start = datetime.now(UTC)
        await component.set(SetRequest(key, "v", metadata={"ttlInSeconds": str(ttl)}))
        end = datetime.now(UTC)
        expires = expire_time_of(await must_get(component, key))
        slack = timedelta(seconds=1)
        assert (
            start + timedelta(seconds=ttl) - slack
            <= expires
            <= end + timedelta(seconds=ttl) + slack
        )

    @requires(StateFeature.TTL)
    async def test_item_with_a_ttl_is_gone_after_it_expires(self, component: Store) -> None:
        key = new_key()
        await component.set(SetRequest(key, "short-lived", metadata={"ttlInSeconds": "1"}))
        item = await must_get(component, key)
        await wait_until_gone(component, key, within=3.0)
        [entry] = await component.bulk_get([GetRequest(key)])
        assert entry.found is False
        if "ETAG" in {str(f) for f in component.features()}:
            with pytest.raises(ETagError) as caught:
                await component.set(SetRequest(key, "v", etag=item.etag))
            assert caught.value.kind is ETagErrorKind.MISMATCH
            await component.set(SetRequest(key, "reborn", options=FIRST_WRITE))
            assert await value_of(component, key) == "reborn"

    @requires(StateFeature.TTL)
    async def test_ttl_of_minus_one_removes_an_existing_ttl(self, component: Store) -> None:
        key = new_key()
        await component.set(SetRequest(key, "v", metadata={"ttlInSeconds": "1"}))
        await component.set(SetRequest(key, "kept", metadata={"ttlInSeconds": "-1"}))
        assert TTL_EXPIRE_TIME not in (await must_get(component, key)).metadata
        await asyncio.sleep(1.5)
        assert await value_of(component, key) == "kept"

    @requires(StateFeature.TTL)
    async def test_bulk_set_applies_each_items_ttl(self, component: Store) -> None:
        with_ttl, without_ttl = new_key("ttl"), new_key("no-ttl")
        await component.bulk_set(
            [SetRequest(with_ttl, 1, metadata={"ttlInSeconds": "60"}), SetRequest(without_ttl, 2)]
        )
        expire_time_of(await must_get(component, with_ttl))
        assert TTL_EXPIRE_TIME not in (await must_get(component, without_ttl)).metadata

    @requires(StateFeature.TTL, StateFeature.TRANSACTIONAL)
    async def test_transaction_applies_ttl(self, component: TransactionalStore[Any]) -> None:
        key = new_key()
        await component.transact([SetRequest(key, "v", metadata={"ttlInSeconds": "60"})])
        expire_time_of(await must_get(component, key))

    @without(StateFeature.TTL)
    async def test_without_ttl_a_ttl_is_ignored_or_refused(self, component: Store) -> None:
        key = new_key()
        try:
            await component.set(SetRequest(key, "v", metadata={"ttlInSeconds": "1"}))
        except (NotSupportedError, InvalidRequestError):
            return
        assert TTL_EXPIRE_TIME not in (await must_get(component, key)).metadata

    # --- key prefixes ---------------------------------------------------------------

    async def test_key_prefix_name_keeps_components_apart(
        self, component_factory: ComponentFactory, conformance_target: Target
    ) -> None:
        first = await self._shared_pair_member(component_factory, conformance_target, "first")
        second: Store = await component_factory(name="second", keyPrefix="name")
        key = new_key()
        await first.set(SetRequest(key, "first's"))
        assert await second.get(GetRequest(key)) is None
        await second.set(SetRequest(key, "second's"))
        assert await value_of(first, key) == "first's"

    async def test_key_prefix_none_shares_keys_between_components(
        self, component_factory: ComponentFactory, conformance_target: Target
    ) -> None:
        first = await self._shared_pair_member(
            component_factory, conformance_target, "first", prefix="none"
        )
        second: Store = await component_factory(name="second", keyPrefix="none")
        key = new_key()
        await first.set(SetRequest(key, "shared"))
        assert await value_of(second, key) == "shared"

    @staticmethod
    async def _shared_pair_member(
        factory: ComponentFactory, target: Target, name: str, prefix: str = "name"
    ) -> Store:
        if not option(target, "shared_storage", True):
            pytest.skip(f"{target.name}: instances do not share storage (shared_storage: false)")
        store: Store = await factory(name=name, keyPrefix=prefix)
        if not issubclass(type(store).settings_model, StateSettings):
            pytest.skip(f"{target.name} has no keyPrefix setting")
        return store
