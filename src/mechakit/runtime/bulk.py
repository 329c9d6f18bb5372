"""Big bulk requests without starving other callers: a cap on items, and work in chunks.

One request of 300,000 keys once held the event loop for seconds, so every other call
(health checks included) waited. The HTTP and gRPC APIs therefore refuse a bulk request of
more than ``max_bulk_keys`` items (state bulk get, save, bulk delete, transactions, bulk
publish), and do the per-item work of an allowed one (parsing, reading the store, building
and encoding the answer) in chunks of :data:`CHUNK` items with a pass through the event
loop between chunks.

Only reads are split into several store calls: a save, bulk delete, transaction or bulk
publish stays one call, so a driver that applies it atomically still does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mechakit.core.state import BulkGetItem, GetRequest, StateStore

from .service.errors import invalid

DEFAULT_MAX_BULK_KEYS = 10_000
"""Items one bulk request may carry. Dapr has no such cap; its 4 MB body limit allows
some 300,000 keys, which take seconds to serve. 10,000 is far above what a bulk call
usually carries and keeps one request's work in the tens of milliseconds per chunk."""

CHUNK = 500
"""Items handled between two passes through the event loop."""

TOO_MANY = "ERR_BULK_TOO_LARGE"
"""The ``errorCode`` (HTTP) and ``ErrorInfo`` reason (gRPC) of a request over the cap."""

T = TypeVar("T")
R = TypeVar("R")


def too_many(count: int, limit: int, what: str) -> str | None:
    """The error message when ``count`` items are over ``limit``; None when allowed."""
    if limit <= 0 or count <= limit:
        return None
    return (
        f"{count} {what} in one request is over the limit of {limit}: split the request, "
        "or raise the limit with 'mechakit run --max-bulk-keys N'"
    )


def check_count(count: int, limit: int, what: str) -> None:
    """Refuse (INVALID, ``ERR_BULK_TOO_LARGE``) a request of ``count`` items over ``limit``."""
    message = too_many(count, limit, what)
    if message is not None:
        raise invalid(TOO_MANY, message)


async def map_chunked(fn: Callable[[int, T], R], items: Sequence[T], chunk: int = CHUNK) -> list[R]:
    """``[fn(i, item) for i, item in enumerate(items)]``, yielding to the loop between chunks."""
    results: list[R] = []
    for start in range(0, len(items), chunk):
        if start:
            await asyncio.sleep(0)
        results.extend(fn(i, items[i]) for i in range(start, min(start + chunk, len(items))))
    return results


async def bulk_get(
    store: StateStore[Any], requests: Sequence[GetRequest], chunk: int = CHUNK
) -> list[BulkGetItem]:
    """``store.bulk_get`` one chunk at a time, so that no single call holds the loop long."""
    if len(requests) <= chunk:
        return await store.bulk_get(requests)
    found: list[BulkGetItem] = []
    for start in range(0, len(requests), chunk):
        found.extend(await store.bulk_get(requests[start : start + chunk]))
        await asyncio.sleep(0)  # a store that answers without suspending still lets others in
    return found


async def json_array(items: Sequence[Any], chunk: int = CHUNK) -> bytes:
    """``items`` as compact JSON (what Starlette's ``JSONResponse`` writes), encoded in chunks."""
    parts: list[str] = []
    for start in range(0, len(items), chunk):
        if start:
            await asyncio.sleep(0)
        text = json.dumps(
            items[start : start + chunk],
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        )
        parts.append(text[1:-1])
    return ("[" + ",".join(parts) + "]").encode()


__all__ = [
    "CHUNK",
    "DEFAULT_MAX_BULK_KEYS",
    "TOO_MANY",
    "bulk_get",
    "check_count",
    "json_array",
    "map_chunked",
    "too_many",
]
