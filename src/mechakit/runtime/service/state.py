"""State: Dapr's rules for the state API, once for every door."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mechakit.core.errors import InvalidRequestError
from mechakit.core.state import (
    BulkGetItem,
    DeleteRequest,
    GetRequest,
    Query,
    QueryableStore,
    QueryResponse,
    SetRequest,
    StateItem,
    StateStore,
    TransactionalStore,
    TransactionOperation,
    parse_ttl,
)
from mechakit.runtime import bulk

if TYPE_CHECKING:
    from mechakit.runtime.in_process import Runtime

from .errors import BlockService, DaprError, ErrorKind, failure, invalid

MALFORMED = "ERR_MALFORMED_REQUEST"
KEY_SEPARATOR = "||"
"""Dapr joins app id and key with ``||``, so a key may not hold it."""


def check_key(key: str, where: str, store: str) -> str:
    """A key Dapr accepts: not empty and without ``||`` (``DAPR_STATE_ILLEGAL_KEY``)."""
    if not key:
        problem = '"key" is a required field (a non-empty string)'
    elif KEY_SEPARATOR in key:
        problem = f"input key/keyPrefix {key!r} can't contain '||'"
    else:
        return key
    raise invalid(
        MALFORMED,
        f"{where}: {problem}",
        reason="DAPR_STATE_ILLEGAL_KEY",
        resource=("state", store),
        field=(key, problem),
    )


def check_write(request: SetRequest | DeleteRequest, where: str, store: str) -> None:
    """The rules of a write that need no store: its key, and its TTL when it is a set."""
    check_key(request.key, where, store)
    if isinstance(request, SetRequest):
        try:
            parse_ttl(request.metadata)
        except InvalidRequestError as exc:
            raise invalid(MALFORMED, f"{where}: {exc.reason}", resource=("state", store)) from None


class StateService(BlockService[StateStore[Any]]):
    """The state API over the stores that ``find`` looks up by name."""

    CATEGORY = "state"
    NOT_FOUND = "ERR_STATE_STORE_NOT_FOUND"
    NOT_FOUND_MESSAGE = "state store {name} is not found"

    def __init__(self, runtime: Runtime, *, max_bulk_keys: int) -> None:
        super().__init__(runtime)
        self.max_bulk_keys = max_bulk_keys

    def check_count(self, count: int, what: str) -> None:
        bulk.check_count(count, self.max_bulk_keys, what)

    async def get(self, name: str, request: GetRequest) -> StateItem | None:
        store = self.component(name)
        check_key(request.key, "key", name)
        with failure(
            "ERR_STATE_GET", f"fail to get {request.key} from state store {name}", ("state", name)
        ):
            return await self.call(name, lambda: store.get(request))

    async def bulk_get(self, name: str, requests: Sequence[GetRequest]) -> list[BulkGetItem]:
        store = self.component(name)
        self.check_count(len(requests), "keys")
        for i, request in enumerate(requests):
            check_key(request.key, f"keys[{i}]", name)
        if not requests:
            return []
        with failure(
            "ERR_STATE_BULK_GET", f"failed getting state from state store {name}", ("state", name)
        ):
            return await self.call(name, lambda: bulk.bulk_get(store, requests))

    async def save(self, name: str, requests: Sequence[SetRequest], *, bulk: bool = False) -> None:
        """Dapr's save: one item is a set, more a bulk set (``bulk``: a bulk set always, so
        that failures come back per key in ``BulkError``)."""
        store = self._checked_writes(name, requests)
        if not requests:
            return
        with failure(
            "ERR_STATE_SAVE", f"failed saving state in state store {name}", ("state", name)
        ):
            if len(requests) == 1 and not bulk:
                await self.call(
                    name, lambda: store.set(requests[0]), repeatable=_repeatable(requests)
                )
            else:
                await self.call(
                    name, lambda: store.bulk_set(requests), repeatable=_repeatable(requests)
                )

    async def delete(self, name: str, request: DeleteRequest) -> None:
        store = self.component(name)
        check_key(request.key, "key", name)
        with failure(
            "ERR_STATE_DELETE", f"failed deleting state with key {request.key}", ("state", name)
        ):
            await self.call(name, lambda: store.delete(request), repeatable=_repeatable([request]))

    async def bulk_delete(self, name: str, requests: Sequence[DeleteRequest]) -> None:
        store = self._checked_writes(name, requests)
        if not requests:
            return
        with failure(
            "ERR_STATE_DELETE", f"failed deleting state in state store {name}", ("state", name)
        ):
            await self.call(
                name, lambda: store.bulk_delete(requests), repeatable=_repeatable(requests)
            )

    def _checked_writes(
        self, name: str, requests: Sequence[SetRequest | DeleteRequest]
    ) -> StateStore[Any]:
        """The store, once the batch is within the bulk cap and every item is valid."""
        store = self.component(name)
        self.check_count(len(requests), "state items")
        for i, request in enumerate(requests):
            check_write(request, f"item {i}", name)
        return store

    def transactional(self, name: str) -> TransactionalStore[Any]:
        store = self.component(name)
        if not isinstance(store, TransactionalStore):
            raise _unsupported(name, "doesn't support transactions", "TRANSACTIONS")
        return store

    async def transact(
        self,
        name: str,
        operations: Sequence[TransactionOperation],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        store = self.transactional(name)
        self.check_count(len(operations), "operations")
        for i, operation in enumerate(operations):
            if not isinstance(operation, SetRequest | DeleteRequest):
                raise invalid(
                    "ERR_NOT_SUPPORTED_STATE_OPERATION",
                    f"operations[{i}]: {operation!r} is not a SetRequest or DeleteRequest",
                )
            check_write(operation, f"operations[{i}]", name)
        if not operations:
            return
        outbox = self._runtime.outbox
        if outbox.enabled(name):
            with failure("ERR_PUBLISH_OUTBOX", "error while publishing outbox message"):
                operations = await outbox.stage(name, operations)
        with failure(
            "ERR_STATE_TRANSACTION", "error while executing state transaction", ("state", name)
        ):
            await self.call(
                name,
                lambda: store.transact(operations, dict(metadata or {})),
                repeatable=_repeatable(operations),
            )

    def queryable(self, name: str) -> QueryableStore[Any]:
        store = self.component(name)
        if not isinstance(store, QueryableStore):
            raise _unsupported(name, "does not support querying", "QUERYING")
        return store

    async def query(
        self, name: str, query: Query | Mapping[str, Any], metadata: Mapping[str, str] | None = None
    ) -> QueryResponse:
        store = self.queryable(name)
        what = f"state store {name} query failed"
        if not isinstance(query, Query):
            with failure("ERR_STATE_QUERY", what, ("state", name)):
                query = Query.from_dict(query, metadata)
        with failure("ERR_STATE_QUERY", what, ("state", name)):
            return await self.call(name, lambda: store.query(query))


def _unsupported(store: str, missing: str, what: str) -> DaprError:
    """A capability the store lacks, as Dapr words it (``DAPR_STATE_<what>_NOT_SUPPORTED``)."""
    return DaprError(
        ErrorKind.UNSUPPORTED,
        "ERR_STATE_STORE_NOT_SUPPORTED",
        f"state store {store} {missing}",
        reason=f"DAPR_STATE_{what}_NOT_SUPPORTED",
        resource=("state", store),
    )


def _repeatable(writes: Sequence[SetRequest | DeleteRequest]) -> bool:
    """Whether repeating these writes cannot change their outcome: none is conditional."""
    return not any(w.etag or w.first_write for w in writes)
