"""Publishing: Dapr's rules for the publish API (topic, rawPayload, TTL, the CloudEvent
envelope, bulk entries), once for every door."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mechakit.core import cloudevents
from mechakit.core.errors import InvalidRequestError
from mechakit.core.metadata import parse_bool
from mechakit.core.pubsub import (
    BulkPublishEntry,
    BulkPublishRequest,
    BulkPublishResponse,
    PublishRequest,
    PubSub,
    PubSubFeature,
)
from mechakit.core.state import parse_ttl
from mechakit.runtime import bulk, tracing

from .errors import BlockService, DaprError, failure, invalid

if TYPE_CHECKING:
    from mechakit.runtime.in_process import Runtime

RAW_PAYLOAD = "rawPayload"
REQUEST_METADATA = "ERR_PUBSUB_REQUEST_METADATA"
EVENTS = "ERR_PUBSUB_EVENTS_SER"


def raw_payload(metadata: Mapping[str, str]) -> bool:
    """Metadata ``rawPayload``, read as Dapr reads a boolean; a bad word is INVALID."""
    value = metadata.get(RAW_PAYLOAD)
    if value is None:
        return False
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise invalid(REQUEST_METADATA, f"failed deserializing metadata. Error: {exc}") from None


def message_ttl(metadata: Mapping[str, str]) -> int | None:
    try:
        return parse_ttl(metadata)
    except InvalidRequestError as exc:
        raise invalid(REQUEST_METADATA, exc.reason) from None


class PubSubService(BlockService[PubSub[Any]]):
    """The publish API over the brokers that ``find`` looks up by name."""

    CATEGORY = "pubsub"
    NOT_FOUND = "ERR_PUBSUB_NOT_FOUND"
    NOT_FOUND_MESSAGE = "pubsub {name} is not found"
    RESOURCE = "pubsub"

    def __init__(self, runtime: Runtime, *, max_bulk_keys: int) -> None:
        super().__init__(runtime)
        self._source = runtime.app_id or "mechakit"
        self.max_bulk_keys = max_bulk_keys

    def envelope(
        self,
        pubsub: PubSub[Any],
        topic: str,
        payload: bytes,
        content_type: str | None,
        metadata: Mapping[str, str],
        *,
        raw: bool,
    ) -> tuple[bytes, str | None]:
        """The bytes to publish: the payload raw, or in a CloudEvent (its own if it is one).

        The TTL is checked either way; a broker without message TTL of its own gets it as
        the event's ``expiration``.
        """
        ttl = message_ttl(metadata)
        if raw:
            return payload, content_type
        native_ttl = PubSubFeature.MESSAGE_TTL in pubsub.features()
        try:
            data = cloudevents.envelope(
                payload,
                content_type,
                topic=topic,
                pubsub_name=pubsub.name,
                source=self._source,
                expire_after=None if native_ttl else ttl,
                trace=tracing.cloudevent_fields(metadata),
            )
        except ValueError as exc:
            raise invalid("ERR_PUBSUB_CLOUD_EVENTS_SER", str(exc)) from None
        return data, cloudevents.CONTENT_TYPE

    async def publish(
        self,
        name: str,
        topic: str,
        payload: bytes,
        content_type: str | None,
        metadata: Mapping[str, str],
    ) -> None:
        pubsub = self.component(name)
        _check_topic(topic, name)
        raw = raw_payload(metadata)
        data, data_type = self.envelope(pubsub, topic, payload, content_type, metadata, raw=raw)
        with failure(
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            f"error when publishing to topic {topic} in pubsub {name}",
            ("pubsub", name),
        ):
            await self.call(
                name, lambda: pubsub.publish(PublishRequest(topic, data, data_type, dict(metadata)))
            )

    async def bulk_publish(
        self,
        name: str,
        topic: str,
        entries: Sequence[BulkPublishEntry],
        metadata: Mapping[str, str],
    ) -> BulkPublishResponse:
        """Entries carry their payload as given; each gets the request's metadata under its
        own, and its envelope unless the request says ``rawPayload``."""
        pubsub = self.component(name)
        _check_topic(topic, name)
        raw = raw_payload(metadata)
        bulk.check_count(len(entries), self.max_bulk_keys, "entries")
        seen: set[str] = set()
        ready = []
        for i, entry in enumerate(entries):
            if not entry.entry_id or entry.entry_id in seen:
                raise invalid(EVENTS, f"entry {i}: entryId is duplicated or not present for entry")
            seen.add(entry.entry_id)
            entry_metadata = {**metadata, **entry.metadata}
            try:
                data, data_type = self.envelope(
                    pubsub, topic, entry.data, entry.content_type, entry_metadata, raw=raw
                )
            except DaprError as exc:
                raise DaprError(exc.kind, exc.code, f"entry {i}: {exc.message}") from None
            ready.append(replace(entry, data=data, content_type=data_type, metadata=entry_metadata))
        with failure(
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            f"error when publishing to topic {topic} in pubsub {name}",
            ("pubsub", name),
        ):
            return await self.call(
                name, lambda: pubsub.bulk_publish(BulkPublishRequest(topic, ready, dict(metadata)))
            )


def _check_topic(topic: str, pubsub: str) -> None:
    if not topic.strip():
        raise invalid(
            "ERR_TOPIC_NAME_EMPTY",
            f"topic is empty in pubsub {pubsub}",
            resource=("pubsub", pubsub),
        )
