"""The gRPC API's wire format: Dapr's protobuf messages read into the core request types,
and answers written back (what a request means is the service layer's)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2, metadata_pb2, state_pb2
from google.protobuf import struct_pb2

from mechakit.core import cloudevents
from mechakit.core.configuration import ConfigurationItem
from mechakit.core.state import (
    BulkGetItem,
    Concurrency,
    Consistency,
    DeleteRequest,
    SetRequest,
    StateOptions,
    TransactionOperation,
    encode_value,
)

from .bulk_subscribe import BULK_EVENT_TYPE, BulkEntry
from .routing import AppSubscription
from .service.errors import invalid

CONCURRENCY = {
    common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE: Concurrency.FIRST_WRITE,
    common_pb2.StateOptions.CONCURRENCY_LAST_WRITE: Concurrency.LAST_WRITE,
}

CONSISTENCY = {
    common_pb2.StateOptions.CONSISTENCY_EVENTUAL: Consistency.EVENTUAL,
    common_pb2.StateOptions.CONSISTENCY_STRONG: Consistency.STRONG,
}


def etag(message: Any, name: str) -> str | None:
    """The ETag of a message's ``Etag`` field; unset or empty means none."""
    if not message.HasField(name):
        return None
    value: str = getattr(message, name).value
    return value or None


def options(message: Any, name: str) -> StateOptions:
    if not message.HasField(name):
        return StateOptions()
    options: common_pb2.StateOptions = getattr(message, name)
    return StateOptions(
        concurrency=CONCURRENCY.get(options.concurrency, Concurrency.LAST_WRITE),
        consistency=CONSISTENCY.get(options.consistency, Consistency.EVENTUAL),
    )


def set_request(item: common_pb2.StateItem) -> SetRequest:
    return SetRequest(
        key=item.key,
        value=state_value(item.value),
        etag=etag(item, "etag"),
        metadata=dict(item.metadata),
        options=options(item, "options"),
    )


def delete_request(item: common_pb2.StateItem) -> DeleteRequest:
    return DeleteRequest(
        key=item.key,
        etag=etag(item, "etag"),
        metadata=dict(item.metadata),
        options=options(item, "options"),
    )


def operation(i: int, operation: state_pb2.TransactionalStateOperation) -> TransactionOperation:
    kind = operation.operationType
    if kind == "upsert":
        return set_request(operation.request)
    if kind == "delete":
        return delete_request(operation.request)
    raise invalid(
        "ERR_NOT_SUPPORTED_STATE_OPERATION",
        f"operations[{i}]: operation type {kind!r} not supported (use upsert or delete)",
    )


def bulk_item(item: BulkGetItem) -> state_pb2.BulkStateItem:
    entry = state_pb2.BulkStateItem(key=item.key)
    if item.error:
        entry.error = item.error
    elif item.found:
        entry.data = state_bytes(item.value)
        entry.etag = item.etag or ""
        entry.metadata.update(item.metadata)
    return entry


def no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not valid JSON")


def state_value(data: bytes) -> Any:
    """Compact JSON as its value (it encodes back to the same bytes); other bytes as bytes."""
    try:
        value = json.loads(data, parse_constant=no_constant)
    except (ValueError, RecursionError):
        return data
    return value if encode_value(value)[0] == data else data


def state_bytes(value: Any) -> bytes:
    return encode_value(value)[0]


def configuration_items(
    items: Mapping[str, ConfigurationItem],
) -> dict[str, common_pb2.ConfigurationItem]:
    return {
        key: common_pb2.ConfigurationItem(
            value=item.value, version=item.version, metadata=dict(item.metadata)
        )
        for key, item in items.items()
    }


def subscription(found: AppSubscription) -> metadata_pb2.PubsubSubscription:
    """A subscription as the metadata API lists it (the default route as a rule without match)."""
    rules = [metadata_pb2.PubsubSubscriptionRule(match=r.match, path=r.path) for r in found.rules]
    if found.default_route:
        rules.append(metadata_pb2.PubsubSubscriptionRule(match="", path=found.default_route))
    kind = _SUBSCRIPTION_TYPES.get(found.type, metadata_pb2.DECLARATIVE)
    return metadata_pb2.PubsubSubscription(
        pubsub_name=found.pubsub_name,
        topic=found.topic,
        metadata=dict(found.metadata),
        rules=metadata_pb2.PubsubSubscriptionRules(rules=rules),
        dead_letter_topic=found.dead_letter_topic or "",
        type=kind,
    )


_SUBSCRIPTION_TYPES = {
    "DECLARATIVE": metadata_pb2.DECLARATIVE,
    "PROGRAMMATIC": metadata_pb2.PROGRAMMATIC,
    "STREAMING": metadata_pb2.STREAMING,
}

_CORE_ATTRIBUTES = frozenset(
    {
        "id",
        "source",
        "type",
        "specversion",
        "datacontenttype",
        "data",
        "data_base64",
        "topic",
        "pubsubname",
    }
)
"""CloudEvent attributes a ``TopicEventRequest`` has fields for; the rest are extensions."""


def topic_event_request(
    event: Mapping[str, Any], path: str, subscription: AppSubscription
) -> appcallback_pb2.TopicEventRequest:
    """A CloudEvent as Dapr hands it to a gRPC app (``OnTopicEvent``) or a streaming
    subscriber: its attributes in fields, the data as bytes, other attributes (those JSON
    can carry) as ``extensions``."""
    extensions = struct_pb2.Struct()
    extensions.update(
        {k: v for k, v in event.items() if k not in _CORE_ATTRIBUTES and _json_safe(v)}
    )
    return appcallback_pb2.TopicEventRequest(
        id=str(event.get("id", "")),
        source=str(event.get("source", "")),
        type=str(event.get("type", "")),
        spec_version=str(event.get("specversion", "")),
        data_content_type=str(event.get("datacontenttype", "")),
        data=cloudevents.event_data(event),
        topic=subscription.topic,
        pubsub_name=subscription.pubsub_name,
        path=path,
        extensions=extensions,
    )


def topic_event_bulk_request(
    entries: Sequence[BulkEntry], path: str, subscription: AppSubscription
) -> appcallback_pb2.TopicEventBulkRequest:
    """A batch as daprd hands it to a gRPC app (``OnBulkTopicEvent``): each entry's
    CloudEvent in ``cloud_event``, or a raw payload's bytes in ``bytes``."""
    items = []
    for entry in entries:
        item = appcallback_pb2.TopicEventBulkRequestEntry(
            entry_id=entry.entry_id, content_type=entry.content_type, metadata=entry.metadata
        )
        if entry.raw is not None:
            item.bytes = entry.raw
        else:
            event = topic_event_request(entry.event, path, subscription)
            item.cloud_event.CopyFrom(
                appcallback_pb2.TopicEventCERequest(
                    id=event.id,
                    source=event.source,
                    type=event.type,
                    spec_version=event.spec_version,
                    data_content_type=event.data_content_type,
                    data=event.data,
                    extensions=event.extensions,
                )
            )
        items.append(item)
    return appcallback_pb2.TopicEventBulkRequest(
        id=str(uuid.uuid4()),
        entries=items,
        metadata={"pubsubName": subscription.pubsub_name},
        topic=subscription.topic,
        pubsub_name=subscription.pubsub_name,
        type=BULK_EVENT_TYPE,
        path=path,
    )


def bulk_statuses(answer: appcallback_pb2.TopicEventBulkResponse) -> dict[str, str]:
    """Entry id → status word of a gRPC app's answer to a batch."""
    names = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
    return {item.entry_id: names.Name(item.status) for item in answer.statuses}


def _json_safe(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
