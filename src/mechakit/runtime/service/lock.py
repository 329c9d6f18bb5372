"""Distributed locks: Dapr's lock request rules, once for every door."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechakit.core.errors import InvalidRequestError
from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest, UnlockStatus

from .errors import failure, invalid, lookup
from .state import MALFORMED


class LockService:
    """Locks of the stores ``find`` looks up by name."""

    def __init__(self, find: Callable[[str], LockStore[Any]]) -> None:
        self._find = find

    def store(self, name: str) -> LockStore[Any]:
        return lookup(self._find, name, "ERR_LOCK_STORE_NOT_FOUND", f"lock store {name} not found")

    async def try_lock(self, name: str, resource_id: str, owner: str, expiry_seconds: int) -> bool:
        """True when acquired; False when anyone holds it (the same owner included)."""
        store = self.store(name)
        try:
            request = TryLockRequest(resource_id, owner, expiry_seconds)
        except InvalidRequestError as exc:
            raise invalid(MALFORMED, f"{exc.reason} in lock store {name}") from exc
        with failure("ERR_TRY_LOCK", "failed to try acquiring lock"):
            return await store.try_lock(request)

    async def unlock(self, name: str, resource_id: str, owner: str) -> UnlockStatus:
        store = self.store(name)
        try:
            request = UnlockRequest(resource_id, owner)
        except InvalidRequestError as exc:
            raise invalid(MALFORMED, f"{exc.reason} in lock store {name}") from exc
        with failure("ERR_UNLOCK", "failed to release lock"):
            return await store.unlock(request)
