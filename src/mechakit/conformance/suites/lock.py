"""Lock conformance: one owner per resource, unlock statuses, expiry, request validation.

Every test uses fresh resource ids, so targets on a shared backend do not interfere.
Options (``options:`` of the target):

- ``expiry_timeout`` (seconds, default 3): how long after a 1 s lock was taken it must be
  free again (expiry precision of the backend plus round trips).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from mechakit.conformance.targets import Target
from mechakit.core.errors import InvalidRequestError
from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest, UnlockStatus

pytestmark = pytest.mark.asyncio


def unique_resource(label: str) -> str:
    return f"conformance-{label}-{uuid.uuid4().hex[:10]}"


class LockSuite:
    category = "lock"
    pytestmark = [pytest.mark.asyncio]  # on the class: subclasses in other modules inherit it

    @pytest.fixture
    def expiry_timeout(self, conformance_target: Target) -> float:
        return float(conformance_target.options.get("expiry_timeout", 3))

    async def test_free_resource_is_locked_and_unlocked_by_its_owner(
        self, component: LockStore[Any]
    ) -> None:
        resource = unique_resource("basic")
        assert await component.try_lock(TryLockRequest(resource, "owner-a", 30))
        assert await component.unlock(UnlockRequest(resource, "owner-a")) is UnlockStatus.SUCCESS
        assert await component.try_lock(TryLockRequest(resource, "owner-b", 30))

    async def test_held_lock_cannot_be_taken_by_another_owner(
        self, component: LockStore[Any]
    ) -> None:
        resource = unique_resource("held")
        assert await component.try_lock(TryLockRequest(resource, "owner-a", 30))
        assert not await component.try_lock(TryLockRequest(resource, "owner-b", 30))

    async def test_same_owner_cannot_take_its_held_lock_again(
        self, component: LockStore[Any]
    ) -> None:
        resource = unique_resource("reentrant")
        assert await component.try_lock(TryLockRequest(resource, "owner-a", 30))
        assert not await component.try_lock(TryLockRequest(resource, "owner-a", 30))

    async def test_unlock_by_another_owner_is_refused_and_the_lock_stays_held(
        self, component: LockStore[Any]
    ) -> None:
        resource = unique_resource("others")
        assert await component.try_lock(TryLockRequest(resource, "owner-a", 30))
        status = await component.unlock(UnlockRequest(resource, "owner-b"))
        assert status is UnlockStatus.LOCK_BELONGS_TO_OTHERS
        assert not await component.try_lock(TryLockRequest(resource, "owner-b", 30))
        assert await component.unlock(UnlockRequest(resource, "owner-a")) is UnlockStatus.SUCCESS

    async def test_unlock_of_a_resource_never_locked_reports_it_does_not_exist(
        self, component: LockStore[Any]
    ) -> None:
        status = await component.unlock(UnlockRequest(unique_resource("never"), "owner-a"))
        assert status is UnlockStatus.LOCK_DOES_NOT_EXIST

    async def test_second_unlock_reports_the_lock_does_not_exist(
        self, component: LockStore[Any]
    ) -> None:
        resource = unique_resource("twice")
        assert await component.try_lock(TryLockRequest(resource, "owner-a", 30))
        assert await component.unlock(UnlockRequest(resource, "owner-a")) is UnlockStatus.SUCCESS
        status = await component.unlock(UnlockRequest(resource, "owner-a"))
        assert status is UnlockStatus.LOCK_DOES_NOT_EXIST

    async def test_different_resources_are_locked_independently(
        self, component: LockStore[Any]
    ) -> None:
        first, second = unique_resource("one"), unique_resource("two")
        assert await component.try_lock(TryLockRequest(first, "owner-a", 30))
        assert await component.try_lock(TryLockRequest(second, "owner-b", 30))
        assert await component.unlock(UnlockRequest(first, "owner-a")) is UnlockStatus.SUCCESS
        assert not await component.try_lock(TryLockRequest(second, "owner-a", 30))

    async def test_expired_lock_is_free_and_its_unlock_reports_it_does_not_exist(
        self, component: LockStore[Any], expiry_timeout: float
    ) -> None:
        unlocked_later, taken_later = unique_resource("exp-unlock"), unique_resource("exp-take")
        assert await component.try_lock(TryLockRequest(unlocked_later, "owner-a", 1))
        assert await component.try_lock(TryLockRequest(taken_later, "owner-a", 1))
        assert not await component.try_lock(TryLockRequest(taken_later, "owner-b", 1))

        deadline = time.monotonic() + expiry_timeout
        while not await component.try_lock(TryLockRequest(taken_later, "owner-b", 30)):
            if time.monotonic() > deadline:
                pytest.fail(f"a 1 s lock was still held after {expiry_timeout}s")
            await asyncio.sleep(0.1)
        # Locked before the other one with the same expiry, so expired too by now.
        status = await component.unlock(UnlockRequest(unlocked_later, "owner-a"))
        assert status is UnlockStatus.LOCK_DOES_NOT_EXIST
        assert await component.try_lock(TryLockRequest(unlocked_later, "owner-b", 30))

    @pytest.mark.parametrize(
        ("owner", "expiry"),
        [("", 10), ("owner-a", 0), ("owner-a", -1)],
        ids=["no-owner", "0s", "-1s"],
    )
    async def test_requests_without_owner_or_positive_expiry_are_rejected(
        self, component: LockStore[Any], owner: str, expiry: int
    ) -> None:
        with pytest.raises(InvalidRequestError):
            await component.try_lock(TryLockRequest(unique_resource("bad"), owner, expiry))

    async def test_unlock_without_owner_is_rejected(self, component: LockStore[Any]) -> None:
        with pytest.raises(InvalidRequestError):
            await component.unlock(UnlockRequest(unique_resource("bad"), ""))
