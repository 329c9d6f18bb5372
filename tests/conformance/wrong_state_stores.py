"""State stores that misstate their features, for proving that conformance catches them.

Also a ``mechakit.components`` plug-in module: ``test_wrong_drivers`` installs it (a
dist-info with the entry point, beside a copy of this file) for a child interpreter, the
way a third-party package is installed, and runs ``mechakit conformance`` on each store.

- ``state.lying-etag`` declares ETAG but ignores every ETag it is given.
- ``state.hidden-ttl`` applies ``ttlInSeconds`` (and says nothing of it in the item's
  metadata) but does not declare TTL.
- ``state.hidden-etag`` rejects stale ETags but does not declare ETAG.

Otherwise each is a correct in-memory store, so the features are all the suite can fault.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mechakit.core import ComponentMetadata, ComponentSpec, Settings, hookimpl
from mechakit.core.errors import ETagError, ETagErrorKind
from mechakit.core.state import (
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateFeature,
    StateItem,
    StateStore,
    decode_value,
    encode_value,
    parse_ttl,
)


@dataclass
class _Record:
    data: bytes
    binary: bool
    version: int
    expires_at: float | None


class _DictStore(StateStore[Settings]):
    settings_model = Settings
    checks_etags = False
    applies_ttl = False

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, _Record] = {}
        self._versions = 0

    async def init(self, metadata: ComponentMetadata) -> None:
        self.decode_settings(metadata)

    async def get(self, request: GetRequest) -> StateItem | None:
        record = self._live(request.key)
        if record is None:
            return None
        return StateItem(request.key, decode_value(record.data, record.binary), str(record.version))

    async def set(self, request: SetRequest) -> None:
        self.check_write(request)
        self._check_etag(request.key, request.etag, request.first_write)
        data, binary = encode_value(request.value)
        ttl = parse_ttl(request.metadata)
        expires_at = time.monotonic() + ttl if self.applies_ttl and ttl and ttl > 0 else None
        self._versions += 1
        self._records[request.key] = _Record(data, binary, self._versions, expires_at)

    async def delete(self, request: DeleteRequest) -> None:
        self.check_write(request)
        self._check_etag(request.key, request.etag, first_write=False)
        self._records.pop(request.key, None)

    def _live(self, key: str) -> _Record | None:
        record = self._records.get(key)
        expires_at = record.expires_at if record is not None else None
        if expires_at is not None and expires_at <= time.monotonic():
            del self._records[key]
            return None
        return record

    def _check_etag(self, key: str, etag: str | None, first_write: bool) -> None:
        if not self.checks_etags:
            return
        record = self._live(key)
        if etag is None:
            if first_write and record is not None:
                raise ETagError(ETagErrorKind.MISMATCH, component=self.label, key=key)
            return
        if not etag.isdigit():
            raise ETagError(ETagErrorKind.INVALID, component=self.label, key=key)
        if record is None or int(etag) != record.version:
            raise ETagError(ETagErrorKind.MISMATCH, component=self.label, key=key)


class LyingETagStore(_DictStore):
    """Declares ETAG, hands out ETags, and never checks one."""

    FEATURES = frozenset({StateFeature.ETAG})


class HiddenTTLStore(_DictStore):
    """Expires items after ``ttlInSeconds`` without declaring TTL."""

    applies_ttl = True


class HiddenETagStore(_DictStore):
    """Rejects stale ETags without declaring ETAG."""

    checks_etags = True


@hookimpl
def mechakit_components() -> list[ComponentSpec]:
    return [
        ComponentSpec(f"state.{name}", f"wrong_state_stores:{cls.__name__}", status="alpha")
        for name, cls in {
            "lying-etag": LyingETagStore,
            "hidden-ttl": HiddenTTLStore,
            "hidden-etag": HiddenETagStore,
        }.items()
    ]
