"""The CloudEvents envelope pub/sub messages travel in."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from mechakit.core.cloudevents import event_data, is_expired, new_event, parse_event


def wrap(data: bytes, content_type: str | None) -> dict[str, object]:
    return new_event(data, content_type=content_type, topic="t", pubsub_name="p", source="app")


def test_json_payload_stays_json_and_round_trips() -> None:
    event = wrap(b'{"a": 1}', "application/json")
    assert event["data"] == {"a": 1}
    assert event["specversion"] == "1.0" and event["type"] == "com.dapr.event.sent"
    assert json.loads(event_data(event)) == {"a": 1}


def test_text_and_binary_payloads_round_trip() -> None:
    assert event_data(wrap(b"hello", "text/plain")) == b"hello"
    binary = wrap(b"\x00\xff", "application/octet-stream")
    assert "data_base64" in binary
    assert event_data(binary) == b"\x00\xff"


def test_only_objects_with_the_required_attributes_are_cloudevents() -> None:
    event = wrap(b"{}", None)
    assert parse_event(json.dumps(event).encode()) == event
    assert parse_event(b'{"id": "1"}') is None
    assert parse_event(b"not json") is None


def test_expiration_in_the_past_expires_the_event() -> None:
    now = datetime.now(UTC)
    assert is_expired({"expiration": (now - timedelta(seconds=1)).isoformat()}, now)
    assert not is_expired({"expiration": (now + timedelta(seconds=60)).isoformat()}, now)
    assert not is_expired({}, now)
