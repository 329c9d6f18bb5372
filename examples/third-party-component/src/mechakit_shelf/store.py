"""``state.shelf``: every key of a store in one JSON file, rewritten atomically on each change.

Small on purpose: it declares only ETAG, so the conformance suite runs the ETag tests and
skips (with the reason printed) the TTL and transaction tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

from mechakit.core import ETagError, ETagErrorKind, Settings, setting
from mechakit.core.errors import ConnectionFailedError
from mechakit.core.state import (
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateFeature,
    StateItem,
    StateStore,
    decode_value,
    encode_value,
)


class ShelfSettings(Settings):
    path: str = setting(description="The JSON file holding the store.", example="./shelf.json")


Record = dict[str, Any]


class ShelfStateStore(StateStore[ShelfSettings]):
    """The type argument is the settings model: ``self.settings`` is a ``ShelfSettings``."""

    FEATURES = frozenset({StateFeature.ETAG})

    def __init__(self) -> None:
        super().__init__()
        self._path = Path()
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """``init``'s own step, once the settings are decoded. No ``shut``: no file stays
        open between calls."""
        self._path = Path(self.settings.path)
        await asyncio.to_thread(self._path.parent.mkdir, parents=True, exist_ok=True)
        await self._load()  # fail now, not on first use, if the file is unreadable

    async def get(self, request: GetRequest) -> StateItem | None:
        record = (await self._load()).get(request.key)
        if record is None:
            return None
        data = base64.b64decode(record["data"])
        return StateItem(request.key, decode_value(data, record["binary"]), str(record["version"]))

    async def set(self, request: SetRequest) -> None:
        data, binary = encode_value(request.value)
        async with self._lock:
            records = await self._load()
            version = self._check(records.get(request.key), request.key, request.etag)
            if request.first_write and request.etag is None and request.key in records:
                raise ETagError(ETagErrorKind.MISMATCH, component=self.label, key=request.key)
            records[request.key] = {
                "data": base64.b64encode(data).decode(),
                "binary": binary,
                "version": version + 1,
            }
            await self._save(records)

    async def delete(self, request: DeleteRequest) -> None:
        async with self._lock:
            records = await self._load()
            self._check(records.get(request.key), request.key, request.etag)
            if records.pop(request.key, None) is not None:
                await self._save(records)

    def _check(self, record: Record | None, key: str, etag: str | None) -> int:
        """The current version; an ETagError when ``etag`` is given and does not match it."""
        version = int(record["version"]) if record else 0
        if etag is None:
            return version
        if not etag.isdigit():
            raise ETagError(ETagErrorKind.INVALID, component=self.label, key=key)
        if record is None or int(etag) != version:
            raise ETagError(ETagErrorKind.MISMATCH, component=self.label, key=key)
        return version

    async def _load(self) -> dict[str, Record]:
        """Every operation reads through here, so every one fails the same way (the base's
        ``ComponentNotOpenError``) before ``init`` or after ``close``."""
        self.require_open()
        try:
            text = await asyncio.to_thread(self._path.read_text)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConnectionFailedError(
                f"cannot read {self._path}: {exc}", component=self.label
            ) from exc
        records: dict[str, Record] = json.loads(text) if text else {}
        return records

    async def _save(self, records: dict[str, Record]) -> None:
        def write() -> None:
            tmp = self._path.with_suffix(self._path.suffix + ".tmp")
            tmp.write_text(json.dumps(records))
            os.replace(tmp, self._path)

        await asyncio.to_thread(write)
