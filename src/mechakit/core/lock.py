"""The distributed lock contract: one owner per resource until unlock or expiry."""

from __future__ import annotations

import enum
from abc import abstractmethod
from dataclasses import dataclass

from .component import Component, SettingsT
from .errors import InvalidRequestError


class UnlockStatus(enum.IntEnum):
    """Numbered as in Dapr's ``UnlockResponse.Status``."""

    SUCCESS = 0
    LOCK_DOES_NOT_EXIST = 1
    LOCK_BELONGS_TO_OTHERS = 2
    INTERNAL_ERROR = 3


@dataclass(frozen=True)
class TryLockRequest:
    resource_id: str
    owner: str
    expiry_seconds: int

    def __post_init__(self) -> None:
        _require(self.resource_id, "resourceId")
        _require(self.owner, "lockOwner")
        if isinstance(self.expiry_seconds, bool) or not isinstance(self.expiry_seconds, int):
            raise InvalidRequestError(
                "expiryInSeconds must be a whole number", field="expiryInSeconds"
            )
        if self.expiry_seconds <= 0:
            raise InvalidRequestError(
                f"expiryInSeconds must be > 0, got {self.expiry_seconds}", field="expiryInSeconds"
            )


@dataclass(frozen=True)
class UnlockRequest:
    resource_id: str
    owner: str

    def __post_init__(self) -> None:
        _require(self.resource_id, "resourceId")
        _require(self.owner, "lockOwner")


def _require(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{name} must be a non-empty string", field=name)


class LockStore(Component[SettingsT]):
    @abstractmethod
    async def try_lock(self, request: TryLockRequest) -> bool:
        """True when acquired; False when held by anyone, the same owner included."""

    @abstractmethod
    async def unlock(self, request: UnlockRequest) -> UnlockStatus: ...
