"""The HTTP API's wire format: Dapr's JSON request bodies read into the core request
types (shape errors are INVALID with the field's place named), and answers written back.

What a request means is the service layer's (:mod:`mechakit.runtime.service`); this module
only reads and writes the bytes, as the gRPC API's protobuf helpers do for gRPC.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.requests import Request

from mechakit.core import cloudevents
from mechakit.core.errors import InvalidRequestError
from mechakit.core.pubsub import BulkPublishEntry
from mechakit.core.state import (
    BulkGetItem,
    DeleteRequest,
    SetRequest,
    StateOptions,
    TransactionOperation,
)

from .service.errors import DaprError, invalid
from .service.pubsub import EVENTS
from .service.state import MALFORMED

METADATA_PREFIX = "metadata."


# --- request parsing ------------------------------------------------------------------------


def malformed(message: str) -> DaprError:
    return invalid(MALFORMED, message)


def no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not valid JSON")


def json_body(body: bytes, *, code: str = MALFORMED) -> Any:
    if not body.strip():
        raise invalid(code, "failed deserializing HTTP body: the body is empty")
    try:
        return json.loads(body, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise invalid(code, f"failed deserializing HTTP body: {exc}") from None


def kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def json_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise malformed(f"{what}: expected a JSON object, got {kind(value)}")
    return value


def string_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise malformed(f"{where}: expected an object of strings, got {kind(value)}")
    bad = next((k for k, v in value.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise malformed(f"{where}.{bad}: expected a string, got {kind(value[bad])}")
    return dict(value)


def key(value: object, where: str) -> str:
    """A key's JSON type; the rules of keys are the service's (``check_key``)."""
    if not isinstance(value, str):
        raise malformed(f'{where}: "key" is a required field (a non-empty string)')
    return value


def etag(value: object, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise malformed(f"{where}.etag: expected a string, got {kind(value)}")


def state_options(concurrency: object, consistency: object, where: str) -> StateOptions:
    for name, value in (("concurrency", concurrency), ("consistency", consistency)):
        if value is not None and not isinstance(value, str):
            raise malformed(f"{where}.{name}: expected a string, got {kind(value)}")
    try:
        return StateOptions.parse(concurrency=concurrency, consistency=consistency)
    except InvalidRequestError as exc:
        raise malformed(f"{where}: {exc.reason}") from None


def item_options(item: Mapping[str, Any], where: str) -> StateOptions:
    options = item.get("options")
    if options is None:
        return StateOptions()
    options = json_object(options, f"{where}.options")
    return state_options(options.get("concurrency"), options.get("consistency"), f"{where}.options")


def set_request(item: object, where: str, query: Mapping[str, str]) -> SetRequest:
    item = json_object(item, where)
    metadata = {**string_map(item.get("metadata"), f"{where}.metadata"), **query}
    return SetRequest(
        key=key(item.get("key"), where),
        value=item.get("value"),
        etag=etag(item.get("etag"), where),
        metadata=metadata,
        options=item_options(item, where),
    )


def delete_request(item: object, where: str, query: Mapping[str, str]) -> DeleteRequest:
    item = json_object(item, where)
    return DeleteRequest(
        key=key(item.get("key"), where),
        etag=etag(item.get("etag"), where),
        metadata={**string_map(item.get("metadata"), f"{where}.metadata"), **query},
        options=item_options(item, where),
    )


def operation(raw: object, where: str, query: Mapping[str, str]) -> TransactionOperation:
    operation = json_object(raw, where)
    kind = operation.get("operation")
    item = operation.get("request")
    if kind == "upsert":
        return set_request(item, f"{where}.request", query)
    if kind == "delete":
        return delete_request(item, f"{where}.request", query)
    raise invalid(
        "ERR_NOT_SUPPORTED_STATE_OPERATION",
        f"{where}: operation type {kind!r} not supported (use upsert or delete)",
    )


def query_metadata(request: Request) -> dict[str, str]:
    """``?metadata.ttlInSeconds=10`` → ``{"ttlInSeconds": "10"}`` (first value wins, as in Dapr)."""
    metadata: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith(METADATA_PREFIX) and len(key) > len(METADATA_PREFIX):
            metadata.setdefault(key[len(METADATA_PREFIX) :], value)
    return metadata


def bulk_publish_entry(i: int, raw_entry: object) -> BulkPublishEntry:
    """One entry of a bulk publish body; its ``event`` as the bytes it stands for."""
    where = f"entry {i}"
    if not isinstance(raw_entry, dict):
        raise invalid(EVENTS, f"{where}: expected an object, got {kind(raw_entry)}")
    entry_id = raw_entry.get("entryId")
    content_type = raw_entry.get("contentType")
    if not isinstance(content_type, str):
        raise invalid(EVENTS, f"{where}: 'contentType' must be a string")
    try:
        metadata = string_map(raw_entry.get("metadata"), "metadata")
    except DaprError as exc:
        raise invalid(EVENTS, f"{where}: {exc.message}") from None
    data = event_bytes(raw_entry.get("event"), content_type, where)
    return BulkPublishEntry(
        entry_id if isinstance(entry_id, str) else "", data, content_type, metadata
    )


def base_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def event_bytes(event: object, content_type: str, where: str) -> bytes:
    """A bulk entry's ``event`` as bytes, checked against its ``contentType`` as Dapr does."""
    base = base_type(content_type)
    mismatch = invalid(EVENTS, f"{where}: mismatch between contentType {content_type!r} and event")
    if base == "application/octet-stream":
        if not isinstance(event, str):
            raise mismatch
        try:
            return base64.b64decode(event, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(EVENTS, f"{where}: binary event data must be base64") from None
    if base.startswith("text/") or base.endswith("/xml"):
        if not isinstance(event, str):
            raise mismatch
        return event.encode()
    if cloudevents.is_json_content(base):
        return json.dumps(event, separators=(",", ":")).encode()
    raise mismatch


def field(body: Mapping[str, Any], name: str, proto_name: str) -> Any:
    """A field by its JSON name or its proto name, as protojson accepts both."""
    return body.get(name, body.get(proto_name))


def proto_str(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise malformed(f"{name}: expected a string, got {kind(value)}")
    return value


def lock_owner(body: Mapping[str, Any]) -> tuple[str, str]:
    """A lock request's ``resourceId`` and ``lockOwner`` (JSON or proto field names)."""
    return (
        proto_str(field(body, "resourceId", "resource_id"), "resourceId"),
        proto_str(field(body, "lockOwner", "lock_owner"), "lockOwner"),
    )


def proto_int(value: object, name: str) -> int:
    """An int32 as protojson reads it: a whole number, or a string holding one."""
    if value is None:
        return 0
    number: object = value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,10}", value.strip()):
        number = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if not is_int(number) or not -(2**31) <= number < 2**31:  # type: ignore[operator]
        raise malformed(f"{name}: expected a 32-bit whole number, got {value!r}")
    assert isinstance(number, int)
    return number


# --- responses ------------------------------------------------------------------------------


def state_body(value: Any) -> tuple[bytes, str]:
    if isinstance(value, bytes):
        return value, "application/octet-stream"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(), "application/json"


def bulk_entry(item: BulkGetItem) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": item.key}
    if item.error:
        entry["error"] = item.error
    elif item.found:
        entry["data"] = state_data(item.value)
        if item.etag is not None:
            entry["etag"] = item.etag
        if item.metadata:
            entry["metadata"] = dict(item.metadata)
    return entry


def state_data(value: Any) -> Any:
    """A value inside a JSON answer: bytes that are JSON as JSON, other bytes as base64."""
    if not isinstance(value, bytes):
        return value
    try:
        return json.loads(value, parse_constant=no_constant)
    except (ValueError, RecursionError):
        return base64.b64encode(value).decode()


_UNSAFE_HEADER_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_HEADER_NAME_CHARS = "!#$&'*+-.^_`|~"


def header_value(value: str) -> str:
    """Header-safe text: control and non-Latin-1 characters make the value percent-encoded."""
    return quote(value, safe="") if _UNSAFE_HEADER_VALUE.search(value) else value


def metadata_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    return {
        METADATA_PREFIX + quote(str(k), safe=_HEADER_NAME_CHARS): header_value(str(v))
        for k, v in metadata.items()
    }
