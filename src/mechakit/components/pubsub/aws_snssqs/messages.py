"""Messages of pubsub.aws.snssqs on the wire: the SNS body and String attributes a publish
sends, and the SNS envelope that SQS holds when raw message delivery is off."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass

from mechakit.core.errors import InvalidRequestError
from mechakit.core.pubsub import Message

FIFO_GROUP_METADATA = "fifoMessageGroupID"
"""Request metadata choosing the FIFO message group of one published message."""


def encode(
    topic: str,
    data: bytes,
    content_type: str | None,
    metadata: Mapping[str, str],
    *,
    component: str,
) -> tuple[str, dict[str, dict[str, str]]]:
    """The SNS message body and String attributes carrying ``data``, ``content_type`` and
    ``metadata``; an ``InvalidRequestError`` for a key SNS cannot take."""
    attributes: dict[str, dict[str, str]] = {}
    empty: list[str] = []
    for key, value in metadata.items():
        if not _ATTRIBUTE_NAME.fullmatch(key) or ".." in key or key.startswith(_RESERVED):
            raise InvalidRequestError(
                f"metadata key {key!r} cannot be an SNS message attribute name (letters, "
                "digits, '-', '_' and single '.' inside, at most 256; not starting with "
                "'AWS.', 'Amazon.' or 'mechakit.')",
                component=component,
                key=topic,
                field=key,
            )
        if key == _CONTENT_TYPE:
            raise InvalidRequestError(
                f"metadata key {_CONTENT_TYPE!r} is reserved; set the content type instead",
                component=component,
                key=topic,
                field=key,
            )
        if value == "":
            empty.append(key)
        else:
            attributes[key] = {"DataType": "String", "StringValue": str(value)}
    if empty:
        attributes[_EMPTY] = {"DataType": "String", "StringValue": ",".join(empty)}
    if content_type:
        attributes[_CONTENT_TYPE] = {"DataType": "String", "StringValue": content_type}
    raw = bytes(data)
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        body = ""
    if not body:
        encoding = "base64" if raw else "empty"
        body = base64.b64encode(raw).decode() if raw else "-"
        attributes[_ENCODING] = {"DataType": "String", "StringValue": encoding}
    return body, attributes


@dataclass(frozen=True)
class Envelope:
    """The SNS notification that SQS holds when raw message delivery is off."""

    topic_arn: str
    message_id: str
    body: str
    attributes: Mapping[str, str]

    @classmethod
    def parse(cls, text: str) -> Envelope | None:
        try:
            decoded = json.loads(text)
        except ValueError:
            return None
        if not isinstance(decoded, dict) or not isinstance(decoded.get("TopicArn"), str):
            return None
        attributes = {}
        for name, value in (decoded.get("MessageAttributes") or {}).items():
            if isinstance(value, dict) and isinstance(value.get("Value"), str):
                attributes[str(name)] = value["Value"]
        return cls(
            decoded["TopicArn"],
            str(decoded.get("MessageId", "")),
            str(decoded.get("Message", "")),
            attributes,
        )

    def message(self, topic: str, delivery_count: int) -> Message:
        attributes = dict(self.attributes)
        encoding = attributes.pop(_ENCODING, "")
        data = self.body.encode()
        if encoding == "base64":
            with contextlib.suppress(binascii.Error, ValueError):
                data = base64.b64decode(self.body, validate=True)
        elif encoding == "empty":
            data = b""
        content_type = attributes.pop(_CONTENT_TYPE, None)
        for key in attributes.pop(_EMPTY, "").split(","):
            if key:
                attributes[key] = ""
        return Message(
            topic=topic,
            data=data,
            metadata=types.MappingProxyType(attributes),
            content_type=content_type,
            id=self.message_id,
            delivery_count=delivery_count,
        )


_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}(?<!\.)|[A-Za-z0-9_-]")
_RESERVED = ("AWS.", "Amazon.", "mechakit.")
_CONTENT_TYPE = "contentType"
_ENCODING = "mechakit.encoding"
_EMPTY = "mechakit.empty"

__all__ = ["FIFO_GROUP_METADATA", "Envelope", "encode"]
