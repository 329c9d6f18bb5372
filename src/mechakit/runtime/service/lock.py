"""Distributed locks: Dapr's lock request rules, once for every door."""

from __future__ import annotations

from typing import Any

from mechakit.core.errors import InvalidRequestError
from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest, UnlockStatus

from .errors import BlockService, DaprError, failure, invalid
from .state import MALFORMED


class LockService(BlockService[LockStore[Any]]):
    """Locks of the stores ``find`` looks up by name."""

    CATEGORY = "lock"
    NOT_FOUND = "ERR_LOCK_STORE_NOT_FOUND"
    NOT_FOUND_MESSAGE = "lock store {name} not found"

    async def try_lock(self, name: str, resource_id: str, owner: str, expiry_seconds: int) -> bool:
        """True when acquired; False when anyone holds it (the same owner included)."""
        store = self.component(name)
        try:
            request = TryLockRequest(resource_id, owner, expiry_seconds)
        except InvalidRequestError as exc:
            raise _bad_request(exc, name) from exc
        with failure("ERR_TRY_LOCK", "failed to try acquiring lock", ("lock", name)):
            return await self.call(name, lambda: store.try_lock(request), repeatable=False)

    async def unlock(self, name: str, resource_id: str, owner: str) -> UnlockStatus:
        store = self.component(name)
        try:
            request = UnlockRequest(resource_id, owner)
        except InvalidRequestError as exc:
            raise _bad_request(exc, name) from exc
        with failure("ERR_UNLOCK", "failed to release lock", ("lock", name)):
            return await self.call(name, lambda: store.unlock(request), repeatable=False)


_REASONS = {
    "resourceId": "DAPR_LOCK_RESOURCE_ID_EMPTY",
    "lockOwner": "DAPR_LOCK_OWNER_EMPTY",
    "expiryInSeconds": "DAPR_LOCK_EXPIRY_NOT_POSITIVE",
}
"""Dapr's reason for each lock request field a request got wrong."""


def _bad_request(error: InvalidRequestError, store: str) -> DaprError:
    return invalid(
        MALFORMED,
        f"{error.reason} in lock store {store}",
        reason=_REASONS.get(error.field or ""),
        resource=("lock", store),
        field=(error.field, error.reason) if error.field else None,
    )
