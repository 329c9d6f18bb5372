"""lock.in-memory beyond the conformance suite: expiry on a stepped monotonic clock."""

from __future__ import annotations

import pytest

from mechakit.components.lock.in_memory import InMemoryLockStore
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import ComponentNotOpenError
from mechakit.core.lock import TryLockRequest, UnlockRequest, UnlockStatus
from mechakit.core.registry import default_registry


class SteppedClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
async def locks(clock: SteppedClock) -> InMemoryLockStore:
    store = InMemoryLockStore(clock=clock)
    await store.init(ComponentMetadata("locks", "lock.in-memory"))
    return store


def test_registry_builds_the_driver_from_its_type_string() -> None:
    assert isinstance(default_registry().create("lock.in-memory"), InMemoryLockStore)


async def test_lock_is_held_until_the_instant_it_expires(
    locks: InMemoryLockStore, clock: SteppedClock
) -> None:
    assert await locks.try_lock(TryLockRequest("orders", "a", 10))
    clock.now += 9.999
    assert not await locks.try_lock(TryLockRequest("orders", "b", 10))
    clock.now += 0.001
    assert await locks.try_lock(TryLockRequest("orders", "b", 10))


async def test_expired_lock_cannot_be_unlocked_by_its_former_owner(
    locks: InMemoryLockStore, clock: SteppedClock
) -> None:
    assert await locks.try_lock(TryLockRequest("orders", "a", 5))
    clock.now += 5
    assert await locks.unlock(UnlockRequest("orders", "a")) is UnlockStatus.LOCK_DOES_NOT_EXIST


async def test_relocked_resource_keeps_its_new_expiry_after_the_old_one_passes(
    locks: InMemoryLockStore, clock: SteppedClock
) -> None:
    assert await locks.try_lock(TryLockRequest("orders", "a", 5))
    assert await locks.unlock(UnlockRequest("orders", "a")) is UnlockStatus.SUCCESS
    clock.now += 4
    assert await locks.try_lock(TryLockRequest("orders", "b", 5))
    clock.now += 2
    assert not await locks.try_lock(TryLockRequest("orders", "a", 5))
    assert await locks.unlock(UnlockRequest("orders", "a")) is UnlockStatus.LOCK_BELONGS_TO_OTHERS
    assert await locks.unlock(UnlockRequest("orders", "b")) is UnlockStatus.SUCCESS


async def test_instances_hold_separate_locks(clock: SteppedClock) -> None:
    first, second = InMemoryLockStore(clock=clock), InMemoryLockStore(clock=clock)
    for store in (first, second):
        await store.init(ComponentMetadata("locks", "lock.in-memory"))
    assert await first.try_lock(TryLockRequest("orders", "a", 5))
    assert await second.try_lock(TryLockRequest("orders", "b", 5))


async def test_close_releases_every_lock(locks: InMemoryLockStore) -> None:
    assert await locks.try_lock(TryLockRequest("orders", "a", 5))
    await locks.close()
    await locks.close()
    with pytest.raises(ComponentNotOpenError):
        await locks.unlock(UnlockRequest("orders", "a"))
    await locks.init(ComponentMetadata("locks", "lock.in-memory"))
    assert await locks.unlock(UnlockRequest("orders", "a")) is UnlockStatus.LOCK_DOES_NOT_EXIST
