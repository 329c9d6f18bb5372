"""The state store contract: key/value with ETags, TTL, bulk, transactions and query."""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias, TypeVar

from .component import Component, ComponentMetadata, FeaturesMixin, SettingsT
from .errors import (
    BulkError,
    ComponentError,
    ComponentNotOpenError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    MechakitError,
)
from .metadata import Settings, setting


class StateFeature(enum.StrEnum):
    ETAG = "ETAG"
    TRANSACTIONAL = "TRANSACTIONAL"
    QUERY_API = "QUERY_API"
    TTL = "TTL"
    DELETE_WITH_PREFIX = "DELETE_WITH_PREFIX"
    PARTITION_KEY = "PARTITION_KEY"
    KEYS_LIKE = "KEYS_LIKE"


class Concurrency(enum.StrEnum):
    FIRST_WRITE = "first-write"
    LAST_WRITE = "last-write"


class Consistency(enum.StrEnum):
    STRONG = "strong"
    EVENTUAL = "eventual"


def _choice(enum_type: type[enum.StrEnum], value: object, what: str) -> Any:
    if isinstance(value, enum_type):
        return value
    if value in (None, ""):
        return None
    try:
        return enum_type(str(value).lower())
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise InvalidRequestError(f"{what} must be one of {allowed}, got {value!r}") from None


@dataclass(frozen=True)
class StateOptions:
    concurrency: Concurrency = Concurrency.LAST_WRITE
    consistency: Consistency = Consistency.EVENTUAL

    @classmethod
    def parse(cls, concurrency: object = None, consistency: object = None) -> StateOptions:
        """Build options from API strings; unknown words are an ``InvalidRequestError``."""
        return cls(
            concurrency=_choice(Concurrency, concurrency, "concurrency") or Concurrency.LAST_WRITE,
            consistency=_choice(Consistency, consistency, "consistency") or Consistency.EVENTUAL,
        )


def _check_key_text(key: object) -> None:
    """A key every store can encode: a lone surrogate (``"\\ud800"`` in JSON) is refused."""
    if isinstance(key, str) and not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError:
            raise InvalidRequestError(
                f"key {key!r} is not valid Unicode text (a lone surrogate)", field="key"
            ) from None


@dataclass(frozen=True)
class GetRequest:
    key: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    consistency: Consistency = Consistency.EVENTUAL

    def __post_init__(self) -> None:
        _check_key_text(self.key)


@dataclass(frozen=True)
class SetRequest:
    key: str
    value: Any
    """``bytes`` are stored raw; anything else round-trips as JSON."""
    etag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    options: StateOptions = StateOptions()

    def __post_init__(self) -> None:
        _check_key_text(self.key)

    @property
    def first_write(self) -> bool:
        return self.options.concurrency is Concurrency.FIRST_WRITE


@dataclass(frozen=True)
class DeleteRequest:
    key: str
    etag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    options: StateOptions = StateOptions()

    def __post_init__(self) -> None:
        _check_key_text(self.key)

    @property
    def first_write(self) -> bool:
        return self.options.concurrency is Concurrency.FIRST_WRITE


TransactionOperation: TypeAlias = SetRequest | DeleteRequest


@dataclass(frozen=True)
class StateItem:
    """A stored value with its ETag; ``metadata`` carries ``ttlExpireTime`` when a TTL is set."""

    key: str
    value: Any
    etag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BulkGetItem:
    """One key of a bulk get: found, missing (``value`` None, no error) or failed (``error``)."""

    key: str
    value: Any = None
    etag: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    found: bool = False


# --- query ---------------------------------------------------------------------------

FilterOp = Literal["EQ", "NEQ", "IN", "GT", "GTE", "LT", "LTE", "AND", "OR"]
_LEAF_OPS = ("EQ", "NEQ", "IN", "GT", "GTE", "LT", "LTE")


@dataclass(frozen=True)
class Filter:
    """One node of a query filter: a comparison on a (dotted) field, or AND/OR of children."""

    op: FilterOp
    key: str = ""
    value: Any = None
    children: tuple[Filter, ...] = ()


@dataclass(frozen=True)
class Sorting:
    key: str
    descending: bool = False


@dataclass(frozen=True)
class Query:
    """Dapr's state query language, parsed and validated."""

    filter: Filter | None = None
    sort: tuple[Sorting, ...] = ()
    limit: int = 0
    token: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Query:
        """Parse ``{"filter": …, "sort": […], "page": {"limit", "token"}}``."""
        if not isinstance(body, Mapping):
            raise InvalidRequestError("query must be a JSON object")
        raw_filter = body.get("filter")
        sort_items = body.get("sort") or []
        page = body.get("page") or {}
        if not isinstance(sort_items, list) or not isinstance(page, Mapping):
            raise InvalidRequestError("query 'sort' must be a list and 'page' an object")
        sorts = []
        for item in sort_items:
            if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
                raise InvalidRequestError(f"query sort entry needs a 'key': {item!r}")
            order = str(item.get("order", "ASC")).upper()
            if order not in ("ASC", "DESC"):
                raise InvalidRequestError(f"query sort order must be ASC or DESC, got {order!r}")
            sorts.append(Sorting(item["key"], order == "DESC"))
        limit = page.get("limit", 0)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise InvalidRequestError(
                f"query page limit must be a whole number >= 0, got {limit!r}"
            )
        token = page.get("token")
        return cls(
            filter=_parse_filter(raw_filter) if raw_filter else None,
            sort=tuple(sorts),
            limit=limit,
            token=str(token) if token not in (None, "") else None,
            metadata=dict(metadata or {}),
        )


def _parse_filter(node: object) -> Filter:
    if not isinstance(node, Mapping) or len(node) != 1:
        raise InvalidRequestError(f"query filter must be an object with one operator: {node!r}")
    op, arg = next(iter(node.items()))
    op = str(op).upper()
    if op in ("AND", "OR"):
        if not isinstance(arg, list) or len(arg) < 2:
            raise InvalidRequestError(f"query {op} needs a list of at least two filters")
        return Filter(op, children=tuple(_parse_filter(c) for c in arg))  # type: ignore[arg-type]
    if op not in _LEAF_OPS:
        allowed = ", ".join((*_LEAF_OPS, "AND", "OR"))
        raise InvalidRequestError(f"unknown query operator {op!r} (supported: {allowed})")
    if not isinstance(arg, Mapping) or len(arg) != 1:
        raise InvalidRequestError(f"query {op} needs one field: value pair, got {arg!r}")
    key, value = next(iter(arg.items()))
    if op == "IN" and not isinstance(value, list):
        raise InvalidRequestError(f"query IN on {key!r} needs a list of values")
    return Filter(op, key=str(key), value=value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class QueryItem:
    key: str
    value: Any
    etag: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class QueryResponse:
    results: Sequence[QueryItem]
    token: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


# --- values, TTL and key prefixes ------------------------------------------------------


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""Built once: ``json.dumps`` with non-default options builds an encoder on every call."""


def encode_value(value: Any) -> tuple[bytes, bool]:
    """Bytes as they are; anything else as compact JSON. Returns (data, is_binary)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), True
    try:
        return _JSON.encode(value).encode(), False
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        # NaN and infinities (a JSON ``1e400`` parses as one) would read back as non-JSON.
        raise InvalidRequestError(f"value is not JSON serialisable: {exc}", field="value") from None


def decode_value(data: bytes, is_binary: bool) -> Any:
    """The inverse of :func:`encode_value`."""
    return data if is_binary else json.loads(data)


TTL_METADATA = "ttlInSeconds"
TTL_EXPIRE_TIME = "ttlExpireTime"
MAX_TTL_SECONDS = 2**31 - 1
"""Dapr's bound (int32 seconds, ~68 years): larger values overflow some stores' expiry."""


def parse_ttl(metadata: Mapping[str, str]) -> int | None:
    """``ttlInSeconds`` from request metadata: None (absent), -1 (no expiry) or seconds > 0."""
    raw = next((v for k, v in metadata.items() if k.lower() == TTL_METADATA.lower()), None)
    if raw is None or raw == "":
        return None
    try:
        seconds = int(str(raw).strip())
    except ValueError:
        raise InvalidRequestError(
            f"metadata {TTL_METADATA!r} must be a whole number of seconds, got {raw!r}",
            field=TTL_METADATA,
        ) from None
    if seconds == -1 or 0 < seconds <= MAX_TTL_SECONDS:
        return seconds
    raise InvalidRequestError(
        f"metadata {TTL_METADATA!r} must be 1 to {MAX_TTL_SECONDS} seconds, or -1 for no "
        f"expiry, got {raw!r}",
        field=TTL_METADATA,
    )


def expire_time(ttl: int | None, now: datetime | None = None) -> datetime | None:
    if ttl is None or ttl < 0:
        return None
    return (now or datetime.now(UTC)) + timedelta(seconds=ttl)


def format_expire_time(when: datetime) -> str:
    """RFC 3339 in UTC, as Dapr returns ``ttlExpireTime``."""
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def ttl_metadata(expires_at: float | datetime | None) -> dict[str, str]:
    """An item's metadata for its expiry (epoch seconds or a datetime): ``ttlExpireTime``,
    or nothing for an item that does not expire."""
    if expires_at is None:
        return {}
    if not isinstance(expires_at, datetime):
        expires_at = datetime.fromtimestamp(expires_at, UTC)
    return {TTL_EXPIRE_TIME: format_expire_time(expires_at)}


def etag_mismatch(key: str, *, first_write: bool = False, component: str) -> ETagError:
    """The error of a failed ETag check, or of a first-write on a key that exists."""
    if first_write:
        return ETagError(
            ETagErrorKind.MISMATCH,
            f"key {key!r} already exists and first-write was requested without an ETag",
            component=component,
            key=key,
        )
    return ETagError(ETagErrorKind.MISMATCH, component=component, key=key)


class StateSettings(Settings):
    """Settings every state store shares."""

    key_prefix: str = setting(
        "appid",
        description=(
            "Prefix for stored keys: 'appid' (app id||key), 'name' (component name||key), "
            "'none', or any other text used as the prefix."
        ),
        example="appid",
    )


def cleanup_interval_setting(default: timedelta, *, example: str) -> Any:
    """The ``cleanupInterval`` field of a store that deletes expired items periodically
    (see ``StateStore.clean_expired_every``)."""
    return setting(
        default,
        name="cleanupInterval",
        aliases=("cleanupIntervalInSeconds",),
        description=(
            "How often expired items are deleted; 0 turns the periodic cleanup off "
            "(expired items are invisible either way)."
        ),
        example=example,
    )


@dataclass(frozen=True)
class KeyPrefix:
    """Dapr's key prefix strategy: stored key = ``prefix||key`` unless the prefix is empty."""

    prefix: str

    SEPARATOR = "||"

    @classmethod
    def resolve(cls, strategy: str, *, app_id: str, component_name: str) -> KeyPrefix:
        lowered = strategy.strip().lower()
        if lowered == "appid":
            return cls(app_id)
        if lowered == "name":
            return cls(component_name)
        if lowered in ("none", ""):
            return cls("")
        return cls(strategy.strip())

    def apply(self, key: str) -> str:
        return f"{self.prefix}{self.SEPARATOR}{key}" if self.prefix else key

    def strip(self, stored: str) -> str:
        head = f"{self.prefix}{self.SEPARATOR}"
        return stored[len(head) :] if self.prefix and stored.startswith(head) else stored


# --- preparing writes -----------------------------------------------------------------

_INT_ETAG = re.compile(r"[0-9]{1,19}", re.ASCII)
_MAX_INT_ETAG = 2**63 - 1


def parse_int_etag(etag: str | None, *, component: str, key: str) -> int | None:
    """A numeric ETag (what most stores use); None when absent, ``INVALID`` when malformed."""
    if etag is None or etag == "":
        return None
    if not _INT_ETAG.fullmatch(etag) or not 0 < int(etag) <= _MAX_INT_ETAG:
        raise ETagError(
            ETagErrorKind.INVALID,
            f"ETag {etag!r} for key {key!r} is invalid: this store's ETags are positive integers",
            component=component,
            key=key,
        )
    return int(etag)


@dataclass(frozen=True)
class PreparedValue:
    data: bytes
    is_binary: bool
    expires_at: float | None
    """Seconds since the epoch; None for no expiry."""
    ttl: int | None = None
    """The request's ``ttlInSeconds``: None (not given), -1 (no expiry) or seconds."""


@dataclass(frozen=True)
class PreparedOperation:
    """A set (``value`` given) or delete (``value`` None), checked for everything that does
    not depend on stored data, so that a batch can be rejected before anything changes."""

    key: str
    stored_key: str
    etag: int | None
    first_write: bool = False
    value: PreparedValue | None = None


def checked_stored_key(key: str, prefix: KeyPrefix, *, component: str) -> str:
    """``key`` with ``prefix`` applied; ``InvalidRequestError`` for an empty key."""
    if not key:
        raise InvalidRequestError("the key must not be empty", component=component, key=key)
    return prefix.apply(key)


def prepare_operation(
    request: TransactionOperation, prefix: KeyPrefix, *, component: str
) -> PreparedOperation:
    """Validate key, numeric ETag, value and TTL of one set or delete request."""
    stored_key = checked_stored_key(request.key, prefix, component=component)
    etag = parse_int_etag(request.etag, component=component, key=request.key)
    if isinstance(request, DeleteRequest):
        return PreparedOperation(request.key, stored_key, etag)
    if not isinstance(request, SetRequest):
        raise InvalidRequestError(
            f"a transaction operation must be a SetRequest or DeleteRequest, got {request!r}",
            component=component,
        )
    return PreparedOperation(
        request.key,
        stored_key,
        etag,
        request.first_write,
        prepare_value(request, component=component),
    )


def prepare_value(request: SetRequest, *, component: str) -> PreparedValue:
    """The encoded value and the parsed ``ttlInSeconds`` of a set request; the errors name
    the component and the key."""
    try:
        data, is_binary = encode_value(request.value)
        ttl = parse_ttl(request.metadata)
    except InvalidRequestError as exc:
        raise InvalidRequestError(
            exc.reason, component=component, key=request.key, field=exc.field
        ) from None
    expires_at = time.time() + ttl if ttl is not None and ttl > 0 else None
    return PreparedValue(data, is_binary, expires_at, ttl)


_Request = TypeVar("_Request", bound="SetRequest | DeleteRequest")
_Prepared = TypeVar("_Prepared")


def prepare_each(
    requests: Sequence[_Request], prepare: Callable[[_Request], _Prepared], *, component: str
) -> list[_Prepared]:
    """Prepare every item of a bulk write before any is written.

    An item that is invalid whatever is stored (key, ETag format, value, TTL) fails the whole
    batch: ``BulkError`` names each such item and nothing is written, so a 4xx never leaves
    half a batch behind. Conflicts found while writing still fail only their own key.
    """
    prepared: list[_Prepared] = []
    errors: dict[str, Exception] = {}
    for request in requests:
        try:
            prepared.append(prepare(request))
        except ComponentNotOpenError:
            raise  # the store's state, not the item's fault
        except ComponentError as exc:
            errors[request.key] = exc
    if errors:
        raise BulkError(errors, component=component)
    return prepared


async def bulk_get_by_stored_key(
    requests: Sequence[GetRequest],
    prefix: KeyPrefix,
    fetch: Callable[[list[str]], Awaitable[Mapping[str, StateItem | Exception]]],
) -> list[BulkGetItem]:
    """Bulk get for stores that read many keys in one go.

    ``fetch`` receives the distinct stored keys and returns, by stored key, the items it
    found and the errors of keys it could not read. Entries come back in request order: an
    empty key is an error entry, a key not found an entry with ``found`` False.
    """
    stored = [prefix.apply(r.key) if r.key else "" for r in requests]
    wanted = list(dict.fromkeys(k for k in stored if k))
    found = await fetch(wanted) if wanted else {}
    return [
        bulk_get_entry(
            request.key,
            found.get(stored_key)
            if stored_key
            else InvalidRequestError("the key must not be empty"),
        )
        for request, stored_key in zip(requests, stored, strict=True)
    ]


def bulk_get_entry(key: str, result: StateItem | Exception | None) -> BulkGetItem:
    """One bulk get entry: the item found, a key not found (None) or the key's error."""
    if result is None:
        return BulkGetItem(key=key)
    if isinstance(result, Exception):
        return BulkGetItem(key=key, error=str(result))
    return BulkGetItem(
        key=key, value=result.value, etag=result.etag, metadata=result.metadata, found=True
    )


# --- the contract -----------------------------------------------------------------------

_BULK_PARALLELISM = 32


class StateStore(FeaturesMixin[StateFeature], Component[SettingsT]):
    """A key/value state store. Required: get, set, delete. Bulk defaults to single calls.

    Helpers every store shares: ``key_prefix`` and ``stored_key`` (resolved from the
    ``keyPrefix`` setting when the settings are decoded), ``prepare`` (a checked write with
    a numeric ETag), and ``clean_expired_every`` (the periodic deletion of expired items,
    in a task that ``close`` stops).
    """

    def __init__(self) -> None:
        super().__init__()
        self.__key_prefix = KeyPrefix("")

    def decode_settings(self, metadata: ComponentMetadata) -> SettingsT:
        settings = super().decode_settings(metadata)
        strategy = settings.key_prefix if isinstance(settings, StateSettings) else "none"
        self.__key_prefix = KeyPrefix.resolve(
            strategy, app_id=metadata.app_id, component_name=metadata.name
        )
        return settings

    @property
    def key_prefix(self) -> KeyPrefix:
        """Dapr's ``keyPrefix`` strategy resolved for this component (none without it)."""
        return self.__key_prefix

    def stored_key(self, key: str) -> str:
        """The key as stored (with the prefix); ``InvalidRequestError`` for an empty key."""
        return checked_stored_key(key, self.__key_prefix, component=self.label)

    def etag_mismatch(self, key: str, *, first_write: bool = False) -> ETagError:
        """The error of a failed ETag check (or first-write on an existing key) for ``key``."""
        return etag_mismatch(key, first_write=first_write, component=self.label)

    def prepare(self, request: TransactionOperation) -> PreparedOperation:
        """``request`` checked for all that does not depend on stored data (key, numeric
        ETag, value, TTL), with its stored key."""
        return prepare_operation(request, self.__key_prefix, component=self.label)

    async def bulk_get_stored(
        self,
        requests: Sequence[GetRequest],
        fetch: Callable[[list[str]], Awaitable[Mapping[str, StateItem | Exception]]],
    ) -> list[BulkGetItem]:
        """``bulk_get`` for a store that reads many keys in one go: ``fetch`` gets the
        distinct stored keys (see :func:`bulk_get_by_stored_key`)."""
        self.require_open()
        return await bulk_get_by_stored_key(requests, self.__key_prefix, fetch)

    def clean_expired_every(
        self, interval: timedelta, purge: Callable[[], Awaitable[object]]
    ) -> None:
        """Call ``purge`` (delete the expired items) every ``interval`` until ``close``;
        0 never. Called from ``open``. A failed purge is logged and tried again next time."""
        seconds = interval.total_seconds()
        if seconds > 0:
            self.start_task(self.__clean_expired(seconds, purge), name="TTL cleanup")

    async def __clean_expired(self, seconds: float, purge: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await purge()
            except MechakitError as exc:
                self.log.warning("%s: TTL cleanup failed, will retry: %s", self.label, exc.reason)
            except Exception:
                self.log.exception("%s: TTL cleanup failed, will retry", self.label)

    @abstractmethod
    async def get(self, request: GetRequest) -> StateItem | None:
        """The item, or None when the key does not exist (or has expired)."""

    @abstractmethod
    async def set(self, request: SetRequest) -> None:
        """Write; ``ETagError`` on a failed ETag or first-write check, and then nothing changed."""

    @abstractmethod
    async def delete(self, request: DeleteRequest) -> None:
        """Delete; deleting a missing key without an ETag succeeds."""

    async def bulk_get(self, requests: Sequence[GetRequest]) -> list[BulkGetItem]:
        """Per-key results in request order; a failure is reported in that key's entry."""

        self.require_open()

        async def one(request: GetRequest) -> BulkGetItem:
            try:
                return bulk_get_entry(request.key, await self.get(request))
            except Exception as exc:
                return bulk_get_entry(request.key, exc)

        return await _bounded_gather([one(r) for r in requests])

    async def bulk_set(self, requests: Sequence[SetRequest]) -> None:
        """Write each item; raise ``BulkError`` naming every key that failed.

        Every item is checked (``check_write``) before any is written: an invalid item fails
        the batch and writes nothing.
        """
        await self._bulk(requests, self.set)

    async def bulk_delete(self, requests: Sequence[DeleteRequest]) -> None:
        """Delete each item; raise ``BulkError`` naming every key that failed."""
        await self._bulk(requests, self.delete)

    def check_write(self, request: SetRequest | DeleteRequest) -> None:
        """Raise for what makes ``request`` invalid whatever is stored: an empty key, a value
        that is not JSON, a bad TTL. A store with its own ETag format checks that too."""
        self.stored_key(request.key)
        if isinstance(request, SetRequest):
            prepare_value(request, component=self.label)

    async def _bulk(self, requests: Sequence[Any], op: Any) -> None:
        self.require_open()
        prepare_each(requests, self.check_write, component=self.label)

        async def one(request: Any) -> tuple[str, Exception | None]:
            try:
                await op(request)
            except Exception as exc:
                return request.key, exc
            return request.key, None

        results = await _bounded_gather([one(r) for r in requests])
        errors = {key: exc for key, exc in results if exc is not None}
        if errors:
            raise BulkError(errors, component=self.label)


class TransactionalStore(StateStore[SettingsT], feature=StateFeature.TRANSACTIONAL):
    """A store whose ``transact`` applies every operation, in order, or none of them."""

    @abstractmethod
    async def transact(
        self, operations: Sequence[TransactionOperation], metadata: Mapping[str, str] | None = None
    ) -> None:
        """Apply all operations atomically; any failed ETag check leaves every key untouched."""


class QueryableStore(StateStore[SettingsT], feature=StateFeature.QUERY_API):
    """A store that answers Dapr's state query language."""

    @abstractmethod
    async def query(self, query: Query) -> QueryResponse: ...


async def _bounded_gather(coros: Sequence[Any]) -> list[Any]:
    limit = asyncio.Semaphore(_BULK_PARALLELISM)

    async def run(coro: Any) -> Any:
        async with limit:
            return await coro

    return list(await asyncio.gather(*(run(c) for c in coros)))
