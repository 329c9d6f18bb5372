"""The transactional outbox: a committed state transaction publishes each of its upserts.

A state store whose Component has metadata ``outboxPublishPubsub`` and
``outboxPublishTopic`` is outbox-enabled, as in Dapr. Publishing cannot join the store's
transaction, so it is done in two phases, as daprd does:

1. before the transaction, each upsert (or its projection, an upsert with operation
   metadata ``outbox.projection: "true"``, which is published and not saved) goes to an
   internal topic (``<appid><store>outbox`` on ``outboxPubsub``, default the publish
   pub/sub), naming a marker key that the transaction writes with the state;
2. the runtime's own subscriber on that topic publishes the message to the user's topic
   only once the marker is in the store, i.e. the transaction committed, then deletes the
   marker. A marker that is not there yet is retried (the commit may still be under way);
   with ``outboxDiscardWhenMissingState: true`` the message is dropped instead.

So a committed transaction publishes each upsert at least once, under a CloudEvent id that
stays the same across redeliveries (``<transaction id>-<n>``), and a failed one publishes
nothing. Each outbox store has its own internal topic, so two stores in one sidecar each
publish to their own topic.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mechakit.core import cloudevents
from mechakit.core.component import Subscription
from mechakit.core.errors import ConfigurationError
from mechakit.core.metadata import parse_bool
from mechakit.core.pubsub import DropMessage, Message, PublishRequest, PubSub, SubscribeRequest
from mechakit.core.state import (
    DeleteRequest,
    GetRequest,
    SetRequest,
    StateStore,
    TransactionOperation,
    encode_value,
)

if TYPE_CHECKING:
    from .in_process import Runtime

log = logging.getLogger("mechakit.outbox")

PROJECTION = "outbox.projection"
MARKER_PREFIX = "outbox-marker-"


@dataclass(frozen=True)
class OutboxConfig:
    """One outbox-enabled state store, from its Component's metadata."""

    store: str
    publish_pubsub: str
    publish_topic: str
    internal_pubsub: str
    discard_when_missing: bool

    @classmethod
    def of(cls, store: str, properties: Mapping[str, str]) -> OutboxConfig | None:
        found = {k.lower(): v for k, v in properties.items()}
        pubsub, topic = found.get("outboxpublishpubsub"), found.get("outboxpublishtopic")
        if not pubsub and not topic:
            return None
        if not pubsub or not topic:
            raise ConfigurationError(
                "an outbox needs both outboxPublishPubsub and outboxPublishTopic",
                component=store,
                field="outboxPublishTopic" if pubsub else "outboxPublishPubsub",
            )
        try:
            discard = parse_bool(found.get("outboxdiscardwhenmissingstate", "false"))
        except ValueError as exc:
            raise ConfigurationError(
                str(exc), component=store, field="outboxDiscardWhenMissingState"
            ) from None
        return cls(store, pubsub, topic, found.get("outboxpubsub") or pubsub, discard)

    def internal_topic(self, app_id: str) -> str:
        return f"{app_id}{self.store}outbox"


class Outbox:
    """The outbox of every outbox-enabled store of one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._configs: dict[str, OutboxConfig] = {}
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        """Read each state store's outbox metadata and subscribe its internal topic."""
        for hosted in self._runtime.components.values():
            if hosted.category != "state":
                continue
            config = OutboxConfig.of(hosted.name, hosted.instance.metadata.properties)
            if config is None:
                continue
            internal = self._pubsub(config, config.internal_pubsub)
            self._pubsub(config, config.publish_pubsub)
            self._configs[config.store] = config
            request = SubscribeRequest(config.internal_topic(self._runtime.app_id))
            self._subscriptions.append(await internal.subscribe(request, self._forwarder(config)))

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.cancel()

    def enabled(self, store: str) -> bool:
        return store in self._configs

    async def stage(
        self, store: str, operations: Sequence[TransactionOperation]
    ) -> list[TransactionOperation]:
        """Phase 1: publish each upsert to the internal topic; the operations to commit
        (projections left out, a marker per published upsert added)."""
        config = self._configs[store]
        transaction = uuid.uuid4().hex
        projected = {
            op.key: op
            for op in operations
            if isinstance(op, SetRequest) and _is_projection(op.metadata)
        }
        committed: list[TransactionOperation] = [
            op
            for op in operations
            if not (isinstance(op, SetRequest) and _is_projection(op.metadata))
        ]
        internal = self._pubsub(config, config.internal_pubsub)
        topic = config.internal_topic(self._runtime.app_id)
        upserts = [op for op in committed if isinstance(op, SetRequest)]
        for index, op in enumerate(upserts):
            published = projected.get(op.key, op)
            marker = f"{MARKER_PREFIX}{transaction}-{index}"
            data, binary = encode_value(published.value)
            envelope = {
                "id": f"{transaction}-{index}",
                "marker": marker,
                "data": data.decode() if not binary else None,
                "binary": data.hex() if binary else None,
                "metadata": {k: v for k, v in published.metadata.items() if k != PROJECTION},
            }
            await internal.publish(
                PublishRequest(topic, json.dumps(envelope).encode(), "application/json")
            )
            committed.append(SetRequest(marker, transaction))
        return committed

    def _forwarder(self, config: OutboxConfig) -> Any:
        async def forward(message: Message) -> None:
            envelope = json.loads(message.data)
            store = self._store(config)
            marker = envelope["marker"]
            if await store.get(GetRequest(marker)) is None:
                if config.discard_when_missing:
                    raise DropMessage(f"outbox message {envelope['id']}: no committed state")
                raise LookupError(
                    f"outbox message {envelope['id']}: the transaction has not committed (yet)"
                )
            payload = (
                bytes.fromhex(envelope["binary"])
                if envelope["binary"] is not None
                else envelope["data"].encode()
            )
            content_type = "application/octet-stream" if envelope["binary"] else "application/json"
            event = cloudevents.new_event(
                payload,
                content_type=content_type,
                topic=config.publish_topic,
                pubsub_name=config.publish_pubsub,
                source=self._runtime.app_id or "mechakit",
                event_id=envelope["id"],
            )
            publisher = self._pubsub(config, config.publish_pubsub)
            await publisher.publish(
                PublishRequest(
                    config.publish_topic,
                    json.dumps(event, separators=(",", ":")).encode(),
                    cloudevents.CONTENT_TYPE,
                    envelope["metadata"],
                )
            )
            await store.delete(DeleteRequest(marker))

        return forward

    def _pubsub(self, config: OutboxConfig, name: str) -> PubSub[Any]:
        try:
            return self._runtime.pubsub(name).component
        except Exception as exc:
            raise ConfigurationError(
                f"outbox pub/sub {name!r} is not a running pub/sub component: {exc}",
                component=config.store,
            ) from None

    def _store(self, config: OutboxConfig) -> StateStore[Any]:
        return self._runtime.state(config.store).component


def _is_projection(metadata: Mapping[str, str]) -> bool:
    try:
        return parse_bool(metadata.get(PROJECTION, "false"))
    except ValueError:
        return False
