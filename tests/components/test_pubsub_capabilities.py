"""BULK_PUBLISH is the BulkPublisher capability: implied by it, refused without it."""

from __future__ import annotations

from typing import Any

import pytest

from mechakit.components.pubsub.aws_snssqs import SnsSqsPubSub
from mechakit.components.pubsub.in_memory import InMemoryPubSub
from mechakit.components.pubsub.redis import RedisPubSub
from mechakit.core.component import Subscription
from mechakit.core.metadata import Settings
from mechakit.core.pubsub import (
    BulkPublisher,
    BulkPublishRequest,
    BulkPublishResponse,
    Handler,
    PublishRequest,
    PubSub,
    PubSubFeature,
    SubscribeRequest,
)


class _Broker(PubSub[Settings]):
    async def publish(self, request: PublishRequest) -> None: ...

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        raise NotImplementedError


def test_a_bulk_publisher_has_bulk_publish_without_listing_it() -> None:
    class Native(BulkPublisher[Settings]):
        FEATURES = frozenset({PubSubFeature.MESSAGE_TTL})

        async def publish(self, request: PublishRequest) -> None: ...

        async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
            raise NotImplementedError

        async def bulk_publish(self, request: BulkPublishRequest) -> BulkPublishResponse:
            return BulkPublishResponse()

    assert Native().features() == {PubSubFeature.BULK_PUBLISH, PubSubFeature.MESSAGE_TTL}


def test_declaring_bulk_publish_without_being_a_bulk_publisher_fails_at_class_definition() -> None:
    with pytest.raises(
        TypeError, match="declares feature 'BULK_PUBLISH' but is not a BulkPublisher"
    ):

        class Pretender(_Broker):
            FEATURES = frozenset({PubSubFeature.BULK_PUBLISH})


def test_a_plain_pubsub_has_no_bulk_publish() -> None:
    assert PubSubFeature.BULK_PUBLISH not in _Broker().features()


@pytest.mark.parametrize(
    ("driver", "bulk"), [(InMemoryPubSub, True), (RedisPubSub, True), (SnsSqsPubSub, False)]
)
def test_the_built_in_drivers_get_bulk_publish_from_the_capability(
    driver: type[PubSub[Any]], bulk: bool
) -> None:
    assert issubclass(driver, BulkPublisher) is bulk
    assert (PubSubFeature.BULK_PUBLISH in driver.FEATURES) is bulk
