"""The CloudEvents 1.0 envelope pub/sub messages travel in, as Dapr builds it."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

CONTENT_TYPE = "application/cloudevents+json"
SPEC_VERSION = "1.0"
EVENT_TYPE = "com.dapr.event.sent"
_REQUIRED = ("id", "source", "specversion", "type")


def is_json_content(content_type: str | None) -> bool:
    base = (content_type or "").split(";")[0].strip().lower()
    return base == "application/json" or base.endswith("+json") or base == "text/json"


def new_event(
    data: bytes,
    *,
    content_type: str | None,
    topic: str,
    pubsub_name: str,
    source: str,
    event_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Wrap a payload: JSON stays JSON, text stays text, anything else goes in ``data_base64``."""
    content_type = content_type or "application/json"
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": EVENT_TYPE,
        "datacontenttype": content_type,
        "topic": topic,
        "pubsubname": pubsub_name,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    text = _utf8(data)
    if text is not None and is_json_content(content_type):
        event["data"] = _strict_json(text) if text else None
    elif text is not None and content_type.startswith("text/"):
        event["data"] = text
    else:
        event["data_base64"] = base64.b64encode(data).decode()
    if extra:
        event.update(extra)
    return event


def _utf8(data: bytes) -> str | None:
    """``data`` as text, or None when it is not UTF-8 (it then travels as ``data_base64``,
    byte for byte, rather than with replacement characters)."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _refuse(text: str) -> NoReturn:
    raise ValueError(f"not a finite JSON number: {text}")


def _finite(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        _refuse(text)
    return number


def _strict_json(text: str) -> Any:
    """JSON as Go's decoder reads it: ``NaN``, ``Infinity`` or a number past a float's range
    is not JSON, so such a payload is carried as the text it is (as Dapr does), never turned
    into a value no JSON reader accepts."""
    try:
        return json.loads(text, parse_constant=_refuse, parse_float=_finite)
    except (ValueError, RecursionError):
        return text


def parse_event(body: bytes) -> dict[str, Any] | None:
    """The event if ``body`` is a CloudEvent (a JSON object with the required attributes)."""
    try:
        event = json.loads(body)
    except ValueError:
        return None
    if isinstance(event, dict) and all(isinstance(event.get(k), str) for k in _REQUIRED):
        return event
    return None


def event_data(event: Mapping[str, Any]) -> bytes:
    """The payload of an event as bytes, whichever way it was carried."""
    if "data_base64" in event:
        return base64.b64decode(event["data_base64"])
    data = event.get("data")
    if data is None:
        return b""
    if isinstance(data, str) and not is_json_content(event.get("datacontenttype")):
        return data.encode()
    return json.dumps(data, separators=(",", ":")).encode()


def is_expired(event: Mapping[str, Any], now: datetime | None = None) -> bool:
    """True when the event carries an ``expiration`` (RFC 3339) that has passed."""
    raw = event.get("expiration")
    if not isinstance(raw, str):
        return False
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= (now or datetime.now(UTC))


def is_cloudevent_content(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == CONTENT_TYPE


def envelope(
    payload: bytes,
    content_type: str | None,
    *,
    topic: str,
    pubsub_name: str,
    source: str,
    expire_after: int | None = None,
    trace: Mapping[str, str] | None = None,
) -> bytes:
    """The bytes to publish: ``payload`` wrapped in a CloudEvent, or, when it is one already
    (``application/cloudevents+json``), that event stamped with topic and pub/sub name.

    ``expire_after`` seconds sets ``expiration``, for brokers that cannot expire messages
    themselves. ``trace`` (``traceid``, ``traceparent``, ``tracestate``) is set on a new
    event, and on a given one that has no ``traceid`` of its own, as Dapr does. A
    CloudEvent payload that is not a JSON object raises ``ValueError``.
    """
    if is_cloudevent_content(content_type):
        text = _utf8(payload)
        event = None if text is None else _strict_json(text)
        if not isinstance(event, dict):
            raise ValueError("a body sent as application/cloudevents+json must be a JSON object")
        event["topic"] = topic
        event["pubsubname"] = pubsub_name
        if trace and "traceid" not in event:
            event["traceid"] = trace.get("traceparent", "")
            event.setdefault("traceparent", event["traceid"])
        if trace and "tracestate" not in event:
            event["tracestate"] = trace.get("tracestate", "")
    else:
        event = new_event(
            payload, content_type=content_type, topic=topic, pubsub_name=pubsub_name, source=source
        )
        event.update(trace or {})
    if expire_after is not None and expire_after > 0:
        expires = datetime.now(UTC) + timedelta(seconds=expire_after)
        event["expiration"] = expires.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(event, separators=(",", ":")).encode()
