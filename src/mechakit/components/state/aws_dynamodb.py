"""``state.aws.dynamodb``: state in one DynamoDB table, one item per key.

The table must exist, with a string partition key named ``partitionKey`` and no sort
key; ``init`` checks that (``DescribeTable``) and fails naming the field otherwise. The
driver never creates tables: that is infrastructure (capacity, encryption, TTL) and for
tests the conformance backend makes one. Each item holds the stored key, ``value`` (a
string of JSON, or binary for ``bytes`` values), ``etag`` and, when ``ttlAttributeName``
is set, that attribute (epoch seconds, as DynamoDB's TTL expects; enable TTL on the table
with the same attribute name so that DynamoDB deletes expired items).

ETags are random (a fresh UUID per write), so an ETag never comes back after a key is
deleted and written again. Every write is one conditional request: an ETag write or
delete requires ``etag`` to match, first-write requires that no live item exists; a failed
condition is ``ETagError`` and nothing changed. Expired items are invisible at once, even
before DynamoDB deletes them (which can take days): reads skip them, ETag checks fail on
them and first-write replaces them. A write without ``ttlInSeconds`` stores the value
without expiry (like ``-1``). Without ``ttlAttributeName`` a TTL is refused
(``NotSupportedError``) and the store does not declare ``TTL``.

Retries: botocore retries a request whose answer was lost (timeout, dropped connection,
5xx); if that attempt was applied, the retry's check fails on the driver's own write. A
failed check returns the stored item, and one holding the write's own fresh ETag is
success; where that cannot be told (a delete, or the item changed again) the error is a
retriable ``OperationTimeoutError`` saying the write may or may not have been applied,
never ``ETagError``. Transactions also carry the ``ClientRequestToken`` that botocore keeps
across retries, which DynamoDB honours for 10 minutes.

Transactions are one ``TransactWriteItems`` call: all or nothing, at most 100 keys.
DynamoDB allows one action per item in a transaction, so several operations on one key
are folded into one: the first one's check goes to DynamoDB, later checks are decided
against what the earlier operations leave (their ETags are known in advance), and the
last write wins. Bulk get is ``BatchGetItem`` (100 keys per request); a key that still
fails after retries carries the error in its entry. Bulk set and delete are concurrent
single writes, each with its own checks. Items are limited to 400 KB by DynamoDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import field_validator

from mechakit.components._shared import aws
from mechakit.components._shared.aws import AwsDriver, AwsFailure, AwsSettings
from mechakit.core.errors import (
    ComponentError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    MechakitError,
    MetadataError,
    NotSupportedError,
    OperationTimeoutError,
    PermissionDeniedError,
)
from mechakit.core.metadata import setting
from mechakit.core.state import (
    BulkGetItem,
    Consistency,
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateFeature,
    StateItem,
    StateSettings,
    TransactionalStore,
    TransactionOperation,
    prepare_value,
    ttl_metadata,
)


class DynamoDBStateSettings(AwsSettings, StateSettings):
    table: str = setting(
        description="Name of an existing table whose partition key is a string named partitionKey.",
        example="dapr-state",
    )
    partition_key: str = setting(
        "key",
        description="Name of the table's partition key attribute.",
        example="key",
    )
    ttl_attribute_name: str = setting(
        "",
        description=(
            "Attribute holding each item's expiry (epoch seconds); enables ttlInSeconds. "
            "Turn on the table's TTL with the same attribute name."
        ),
        example="expiresAt",
    )

    @field_validator("table", "partition_key")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("ttl_attribute_name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.strip() in (_VALUE, _ETAG):
            raise ValueError(f"must differ from {_VALUE!r} and {_ETAG!r}, which the store uses")
        return value.strip()


class DynamoDBStateStore(
    AwsDriver[DynamoDBStateSettings], TransactionalStore[DynamoDBStateSettings]
):
    """Key/value state in DynamoDB: conditional writes for ETags, TTL, transactions."""

    FEATURES = frozenset({StateFeature.ETAG, StateFeature.TTL})
    SERVICE = "dynamodb"

    def __init__(self) -> None:
        super().__init__()
        self._table = ""
        self._partition_key = "key"
        self._ttl_attribute = ""

    def features(self) -> frozenset[StateFeature]:
        """TTL only with ``ttlAttributeName``: without it there is nowhere to keep expiry."""
        if self._ttl_attribute:
            return frozenset(self.FEATURES)
        return frozenset(self.FEATURES - {StateFeature.TTL})

    async def open(self) -> None:
        settings = self.settings
        self._table = settings.table
        self._partition_key = settings.partition_key
        self._ttl_attribute = settings.ttl_attribute_name
        await super().open()
        await self._check_table()

    async def ping(self) -> None:
        await self._call("describe table", self._aws.describe_table, TableName=self._table)

    async def get(self, request: GetRequest) -> StateItem | None:
        key = self.stored_key(request.key)
        reply = await self._call(
            "get",
            self._aws.get_item,
            key=request.key,
            TableName=self._table,
            Key={self._partition_key: {"S": key}},
            ConsistentRead=request.consistency is Consistency.STRONG,
        )
        return self._item(request.key, reply.get("Item"), time.time())

    async def set(self, request: SetRequest) -> None:
        await self._write_one(self._prepare(request))

    async def delete(self, request: DeleteRequest) -> None:
        await self._write_one(self._prepare(request))

    async def bulk_get(self, requests: Sequence[GetRequest]) -> list[BulkGetItem]:
        """``BatchGetItem`` in chunks of 100; a key whose read failed carries its error."""
        strong = any(r.consistency is Consistency.STRONG for r in requests)

        async def fetch(keys: list[str]) -> dict[str, StateItem | Exception]:
            found: dict[str, StateItem | Exception] = {}
            for start in range(0, len(keys), _BATCH_GET_LIMIT):
                chunk = keys[start : start + _BATCH_GET_LIMIT]
                try:
                    items = await self._batch_get(chunk, strong)
                except MechakitError as exc:
                    found.update(dict.fromkeys(chunk, exc))
                    continue
                now = time.time()
                for stored_key, attributes in items.items():
                    item = self._item(stored_key, attributes, now)
                    if item is not None:
                        found[stored_key] = item
            return found

        return await self.bulk_get_stored(requests, fetch)

    async def transact(
        self, operations: Sequence[TransactionOperation], metadata: Mapping[str, str] | None = None
    ) -> None:
        """One ``TransactWriteItems``: every check passes and every write happens, or none."""
        folded = self._fold([self._prepare(op) for op in operations])
        if not folded:
            return
        if len(folded) > _TRANSACTION_LIMIT:
            raise InvalidRequestError(
                f"a transaction may touch at most {_TRANSACTION_LIMIT} keys, got {len(folded)}",
                component=self.label,
            )
        now = time.time()
        actions = []
        for first, last in folded:
            condition = self._condition(first, now)
            if last.item is not None:
                actions.append({"Put": {"TableName": self._table, "Item": last.item, **condition}})
            else:
                key = self._key(last.stored_key)
                actions.append({"Delete": {"TableName": self._table, "Key": key, **condition}})

        def cancelled(failure: AwsFailure) -> MechakitError:
            return self._cancellation_error(failure, folded)

        def in_progress(failure: AwsFailure) -> MechakitError:
            # Only a retry of this very call carries its ClientRequestToken.
            return self._outcome_unknown("transaction", None, "it is still in progress")

        with contextlib.suppress(_OwnWrite):
            await self._call(
                "transaction",
                self._aws.transact_write_items,
                errors={
                    "TransactionCanceledException": cancelled,
                    "TransactionInProgressException": in_progress,
                },
                TransactItems=actions,
            )

    # --- preparing requests -------------------------------------------------------------

    def _key(self, stored_key: str) -> dict[str, Any]:
        return {self._partition_key: {"S": stored_key}}

    def check_write(self, request: SetRequest | DeleteRequest) -> None:
        self._prepare(request)

    def _prepare(self, request: TransactionOperation) -> _Write:
        """Validate everything that does not depend on stored data, before anything is sent."""
        if not isinstance(request, SetRequest | DeleteRequest):
            raise InvalidRequestError(
                f"a transaction operation must be a SetRequest or DeleteRequest, got {request!r}",
                component=self.label,
            )
        stored_key = self.stored_key(request.key)
        etag = self._parse_etag(request.key, request.etag)
        if isinstance(request, DeleteRequest):
            return _Write(request.key, stored_key, etag, first_write=False, item=None)
        value = prepare_value(request, component=self.label)
        item: dict[str, Any] = {
            self._partition_key: {"S": stored_key},
            _VALUE: {"B": value.data} if value.is_binary else {"S": value.data.decode()},
            _ETAG: {"S": uuid.uuid4().hex},
        }
        if value.expires_at is not None:
            if not self._ttl_attribute:
                raise NotSupportedError(
                    "ttlInSeconds needs metadata 'ttlAttributeName' on this store",
                    component=self.label,
                    field="ttlAttributeName",
                    key=request.key,
                )
            item[self._ttl_attribute] = {"N": str(math.ceil(value.expires_at))}
        return _Write(request.key, stored_key, etag, request.first_write and not etag, item)

    def _parse_etag(self, key: str, etag: str | None) -> str | None:
        if etag is None or etag == "":
            return None
        if not _ETAG_FORMAT.fullmatch(etag):
            raise ETagError(
                ETagErrorKind.INVALID,
                f"ETag {etag!r} for key {key!r} is invalid: state.aws.dynamodb ETags are UUIDs",
                component=self.label,
                key=key,
            )
        return etag

    def _condition(self, write: _Write, now: float) -> dict[str, Any]:
        """The condition expression guarding ``write``; expired items count as missing."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        ttl = self._ttl_attribute
        if write.etag is not None:
            names["#etag"] = _ETAG
            values[":etag"] = {"S": write.etag}
            expression = "#etag = :etag"
            if ttl:
                names["#ttl"] = ttl
                values[":now"] = {"N": f"{now:.3f}"}
                expression += " AND (attribute_not_exists(#ttl) OR #ttl > :now)"
        elif write.first_write:
            names["#pk"] = self._partition_key
            expression = "attribute_not_exists(#pk)"
            if ttl:
                names["#ttl"] = ttl
                values[":now"] = {"N": f"{now:.3f}"}
                expression += " OR #ttl <= :now"
        else:
            return {}
        condition: dict[str, Any] = {
            "ConditionExpression": expression,
            "ExpressionAttributeNames": names,
        }
        if values:
            condition["ExpressionAttributeValues"] = values
        # The stored item comes back with a failed check, to tell a retry that found its
        # own write (see _condition_failed) from a real conflict.
        condition["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return condition

    def _fold(self, writes: Sequence[_Write]) -> list[tuple[_Write, _Write]]:
        """(first, last) write per key in order of first appearance; later checks decided here."""
        folded: dict[str, list[_Write]] = {}
        for write in writes:
            seen = folded.get(write.stored_key)
            if seen is None:
                folded[write.stored_key] = [write, write]
                continue
            before = seen[1]
            current = before.item[_ETAG]["S"] if before.item is not None else None
            if write.etag is not None and write.etag != current:
                raise self._etag_error(write)
            if write.first_write and before.item is not None:
                raise self._etag_error(write)
            seen[1] = write
        return [(first, last) for first, last in folded.values()]

    # --- reading items ------------------------------------------------------------------

    def _item(self, key: str, attributes: Mapping[str, Any] | None, now: float) -> StateItem | None:
        """The live item, or None when missing or expired."""
        if not attributes:
            return None
        expires: float | None = None
        if self._ttl_attribute and "N" in attributes.get(self._ttl_attribute, {}):
            expires = float(attributes[self._ttl_attribute]["N"])
            if expires <= now:
                return None
        stored = attributes.get(_VALUE, {})
        value: Any
        if "B" in stored:
            value = bytes(stored["B"])
        else:
            text = str(stored.get("S", ""))
            try:
                value = json.loads(text)
            except ValueError:
                value = text.encode()  # written by something other than mechakit
        etag = attributes.get(_ETAG, {}).get("S")
        return StateItem(key=key, value=value, etag=etag, metadata=ttl_metadata(expires))

    async def _batch_get(
        self, stored_keys: list[str], strong: bool
    ) -> dict[str, Mapping[str, Any]]:
        """Items by stored key; keys DynamoDB leaves unprocessed are asked for again."""
        request: dict[str, Any] = {
            self._table: {
                "Keys": [self._key(k) for k in stored_keys],
                "ConsistentRead": strong,
            }
        }
        found: dict[str, Mapping[str, Any]] = {}
        for attempt in range(_BATCH_ATTEMPTS):
            reply = await self._call("bulk get", self._aws.batch_get_item, RequestItems=request)
            for item in reply.get("Responses", {}).get(self._table, []):
                found[item[self._partition_key]["S"]] = item
            request = reply.get("UnprocessedKeys") or {}
            if not request:
                return found
            await asyncio.sleep(0.05 * 2**attempt)
        left = len(request.get(self._table, {}).get("Keys", []))
        raise aws.ThrottledError(
            f"bulk get: DynamoDB left {left} key(s) unprocessed after {_BATCH_ATTEMPTS} attempts",
            component=self.label,
        )

    # --- errors -------------------------------------------------------------------------

    async def _call(
        self,
        action: str,
        fn: Any,
        *,
        key: str | None = None,
        errors: Mapping[str, aws.ErrorFactory] | None = None,
        **kwargs: Any,
    ) -> Any:
        return await aws.call(
            fn,
            component=self.label,
            action=action,
            key=key,
            errors={**self._table_errors(), **(errors or {})},
            **kwargs,
        )

    def _table_errors(self) -> dict[str, aws.ErrorFactory]:
        def missing(failure: AwsFailure) -> MechakitError:
            return MetadataError(
                f"metadata 'table': table {self._table!r} does not exist ({failure.message})",
                component=self.label,
                field="table",
            )

        return {"ResourceNotFoundException": missing}

    async def _write_one(self, write: _Write) -> None:
        """One conditional ``PutItem`` (a set) or ``DeleteItem``; a failed check that found
        the write's own result is success (see :meth:`_condition_failed`)."""
        if write.item is not None:
            action, send, target = "set", self._aws.put_item, {"Item": write.item}
        else:
            action, send = "delete", self._aws.delete_item
            target = {"Key": self._key(write.stored_key)}
        with contextlib.suppress(_OwnWrite):
            await self._call(
                action,
                send,
                key=write.key,
                errors=self._condition_errors(write),
                TableName=self._table,
                **target,
                **self._condition(write, time.time()),
            )

    def _condition_errors(self, write: _Write) -> dict[str, aws.ErrorFactory]:
        def failed(failure: AwsFailure) -> MechakitError:
            return self._condition_failed(write, write, failure.response.get("Item"), failure)

        return {"ConditionalCheckFailedException": failed}

    def _condition_failed(
        self, write: _Write, last: _Write, stored: Mapping[str, Any] | None, failure: AwsFailure
    ) -> MechakitError:
        """The error for ``write``'s failed check, given the item it found (``ALL_OLD``);
        ``last`` is what the request writes to that key (``write`` itself unless folded)."""
        # botocore retries a request whose answer was lost; when the first attempt was
        # applied, the retry's check fails on that very write. The stored item then holds
        # the write's own fresh ETag: success. When that cannot be told (a delete, or the
        # item changed again since), the outcome is unknown, not a conflict.
        found = (stored or {}).get(_ETAG, {}).get("S")
        if last.item is not None and found == last.item[_ETAG]["S"]:
            return _OwnWrite()
        # Still holding the ETag a delete required (but expired): that delete did not run.
        untouched = last.item is None and found is not None and found == write.etag
        if failure.after_lost_answer and not untouched:
            return self._outcome_unknown("set" if last.item else "delete", write.key)
        return self._etag_error(write)

    def _outcome_unknown(
        self, action: str, key: str | None, why: str = "then its retry failed its check"
    ) -> OperationTimeoutError:
        return OperationTimeoutError(
            f"{action}: the answer to an attempt was lost and {why}, perhaps because of "
            "that attempt; it may or may not have been applied (read before retrying)",
            component=self.label,
            key=key,
        )

    def _etag_error(self, write: _Write) -> ETagError:
        return self.etag_mismatch(write.key, first_write=write.first_write)

    def _cancellation_error(
        self, failure: AwsFailure, folded: Sequence[tuple[_Write, _Write]]
    ) -> MechakitError:
        """The error of the first action DynamoDB gave a reason for cancelling.

        A failed check that found the transaction's own write (a retry after a lost
        answer; see _condition_failed) means the whole transaction was applied.
        """
        given = failure.response.get("CancellationReasons") or []
        reasons = [str(r.get("Code") or "None") for r in given]
        if not reasons:
            found = re.search(r"\[([^\]]*)\]", failure.message)
            reasons = [r.strip() for r in found.group(1).split(",")] if found else []
        items = [r.get("Item") for r in given] or [None] * len(reasons)
        writes = [first for first, _ in folded]
        verdicts = [
            self._condition_failed(first, last, item, failure)
            for (first, last), reason, item in zip(folded, reasons, items, strict=False)
            if reason == "ConditionalCheckFailed"
        ]
        # Own write first (all applied), then a check that really failed, then unknown.
        for kind in (_OwnWrite, ETagError, MechakitError):
            for verdict in verdicts:
                if isinstance(verdict, kind):
                    return verdict
        for write, reason in zip(writes, reasons, strict=False):
            if reason in ("None", ""):
                continue
            detail = f"transaction cancelled: {reason} on key {write.key!r}"
            if reason in (
                "TransactionConflict",
                "ThrottlingError",
                "ProvisionedThroughputExceeded",
            ):
                return aws.ThrottledError(f"{detail}; retry", component=self.label, key=write.key)
            if reason == "ValidationError":
                return InvalidRequestError(detail, component=self.label, key=write.key)
            return ComponentError(detail, component=self.label, key=write.key)
        return ComponentError(f"transaction cancelled: {failure.message}", component=self.label)

    async def _check_table(self) -> None:
        """The table exists and is keyed by the string ``partitionKey`` alone."""
        try:
            reply = await self._call(
                "describe table", self._aws.describe_table, TableName=self._table
            )
        except PermissionDeniedError as exc:
            self.log.warning(
                "%s: cannot check table %r (%s); assuming it is keyed by %r",
                self.label,
                self._table,
                exc.reason,
                self._partition_key,
            )
            return
        table = reply.get("Table", {})
        schema = {k["KeyType"]: k["AttributeName"] for k in table.get("KeySchema", [])}
        types = {
            a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])
        }
        if schema.get("HASH") != self._partition_key or types.get(self._partition_key) != "S":
            raise MetadataError(
                f"metadata 'partitionKey': table {self._table!r} is keyed by "
                f"{schema.get('HASH')!r} ({types.get(schema.get('HASH', ''), '?')}), "
                f"not by the string attribute {self._partition_key!r}",
                component=self.label,
                field="partitionKey",
            )
        if "RANGE" in schema:
            raise MetadataError(
                f"metadata 'table': table {self._table!r} has a sort key "
                f"({schema['RANGE']!r}); state.aws.dynamodb needs a partition key only",
                component=self.label,
                field="table",
            )


class _OwnWrite(MechakitError):
    """Raised by an error factory when a failed check found the call's own write: success."""

    def __init__(self) -> None:
        super().__init__("the request was applied by an earlier attempt")


@dataclass(frozen=True)
class _Write:
    """A validated set (``item`` given) or delete (``item`` None) and its check."""

    key: str
    stored_key: str
    etag: str | None
    first_write: bool
    item: dict[str, Any] | None


_VALUE = "value"
_ETAG = "etag"
_ETAG_FORMAT = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}", re.ASCII
)
"""What this store (hex) and Dapr (dashed) write; anything else can never match."""
_BATCH_GET_LIMIT = 100
_BATCH_ATTEMPTS = 5
_TRANSACTION_LIMIT = 100

__all__ = ["DynamoDBStateSettings", "DynamoDBStateStore"]
