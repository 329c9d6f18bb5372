"""Dapr's Service Bus message metadata, both ways, without touching a broker.

Publish metadata ``MessageId`` (``id``), ``CorrelationId`` (``correlationID``),
``SessionId``, ``Label``, ``ReplyTo``, ``To``, ``PartitionKey``, ``ContentType``,
``ScheduledEnqueueTimeUtc`` and ``ReplyToSessionId`` set the message's own properties,
``ttlInSeconds`` its time to live; every other key is an application property. A received
message's properties come back as ``metadata.<Name>`` (as upstream), beside its application
properties.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mechakit.core.errors import InvalidRequestError
from mechakit.core.pubsub import Message, PublishRequest
from mechakit.core.state import TTL_METADATA, parse_ttl

_PROPERTIES = {
    "messageid": "message_id",
    "id": "message_id",
    "correlationid": "correlation_id",
    "sessionid": "session_id",
    "label": "subject",
    "replyto": "reply_to",
    "to": "to",
    "partitionkey": "partition_key",
    "contenttype": "content_type",
    "replytosessionid": "reply_to_session_id",
}
_SCHEDULED = "scheduledenqueuetimeutc"
_RECEIVED = {
    "MessageId": "message_id",
    "CorrelationId": "correlation_id",
    "SessionId": "session_id",
    "Label": "subject",
    "ReplyTo": "reply_to",
    "To": "to",
    "PartitionKey": "partition_key",
    "ReplyToSessionId": "reply_to_session_id",
}


def message_fields(request: PublishRequest, *, component: str) -> dict[str, Any]:
    """The keyword arguments of ``ServiceBusMessage`` for ``request``; a bad TTL or
    schedule is an InvalidRequestError naming the component, topic and field."""
    fields: dict[str, Any] = {"body": bytes(request.data)}
    properties: dict[str, str] = {}
    for key, value in request.metadata.items():
        lower = key.lower()
        if lower in _PROPERTIES:
            fields[_PROPERTIES[lower]] = value
        elif lower == _SCHEDULED:
            fields["scheduled_enqueue_time_utc"] = _utc(value, key, request.topic, component)
        elif key != TTL_METADATA:
            properties[key] = value
    try:
        ttl = parse_ttl(request.metadata)
    except InvalidRequestError as exc:
        raise InvalidRequestError(
            exc.reason, component=component, key=request.topic, field=TTL_METADATA
        ) from None
    if ttl is not None and ttl > 0:
        fields["time_to_live"] = timedelta(seconds=ttl)
    if request.content_type:
        fields["content_type"] = request.content_type
    if properties:
        fields["application_properties"] = properties
    return fields


def _utc(value: str, key: str, topic: str, component: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(
            f"{key} {value!r} is not an RFC 3339 time", component=component, key=topic, field=key
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def received_message(topic: str, msg: Any) -> Message:
    """A ``Message`` of a ``ServiceBusReceivedMessage`` (or anything with its attributes)."""
    metadata: dict[str, str] = {}
    for key, value in (msg.application_properties or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        metadata[name] = value.decode() if isinstance(value, bytes) else str(value)
    for name, attribute in _RECEIVED.items():
        value = getattr(msg, attribute, None)
        if value:
            metadata[f"metadata.{name}"] = str(value)
    count = int(getattr(msg, "delivery_count", 0) or 0)
    metadata["metadata.DeliveryCount"] = str(max(count, 1))
    for name, attribute in (
        ("EnqueuedTimeUtc", "enqueued_time_utc"),
        ("LockedUntilUtc", "locked_until_utc"),
    ):
        moment = getattr(msg, attribute, None)
        if isinstance(moment, datetime):
            metadata[f"metadata.{name}"] = moment.isoformat()
    sequence = getattr(msg, "sequence_number", None)
    if sequence is not None:
        metadata["metadata.SequenceNumber"] = str(sequence)
    body = msg.body
    data = body if isinstance(body, bytes | bytearray) else b"".join(bytes(b) for b in body)
    return Message(
        topic=topic,
        data=bytes(data),
        metadata=metadata,
        content_type=getattr(msg, "content_type", None) or None,
        id=str(getattr(msg, "message_id", "") or sequence or ""),
        delivery_count=max(count, 1),
    )


__all__ = ["message_fields", "received_message"]
