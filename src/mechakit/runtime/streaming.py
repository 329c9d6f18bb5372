"""Streaming subscriptions: gRPC ``SubscribeTopicEventsAlpha1``, served as daprd serves it.

A client (the SDK's ``DaprClient.subscribe`` and ``subscribe_with_handler``, sync or
asyncio) opens a bidirectional stream and sends an initial request (pub/sub name, topic,
metadata, dead-letter topic). The sidecar subscribes the topic on that pub/sub component,
answers with an initial response, then writes each message as a ``TopicEventRequest`` (the
CloudEvent an ``OnTopicEvent`` app gets) and waits for the client's answer to that event id:
SUCCESS acks, RETRY has the component redeliver it (its backoff, its ``maxDeliveries``, then
the dead-letter topic), DROP acks it without redelivery. No app port is needed; streams come
and go while the sidecar runs, several on one topic being several subscribers.

Delivery is at-least-once, on the component's own subscribe, as for every subscription
(:func:`mechakit.runtime.delivery.topic_handler` reads the answers, under the component's
``inbound`` resiliency policy as daprd applies it to streams: a timeout bounds the wait for
one answer, a retry writes the event again after a RETRY or a timeout, an open circuit
breaker leaves it to the broker). An open stream is listed by the metadata API
(``type: STREAMING``) until it ends. A stream that ends (the
client closes or cancels it, or the sidecar stops) cancels its subscription: events not yet
answered are not acked, so the broker delivers them again, to another stream or the next
one, and their unanswered delivery does not count as a failed one.

A stream whose first message is not an initial request, or names no pub/sub or topic, or
an unknown pub/sub, ends INVALID_ARGUMENT with Dapr's error code; a second initial request
on a stream ends it INVALID_ARGUMENT too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from dapr.proto.runtime.v1 import appcallback_pb2, pubsub_pb2

from mechakit.core.component import Subscription
from mechakit.core.pubsub import SubscribeRequest

from . import grpc_codec as codec
from .app_channels import AppAnswer, AppStatus
from .delivery import topic_handler
from .routing import AppSubscription
from .service import PubSubService
from .service.errors import failure, invalid
from .service.metadata import list_open_stream

log = logging.getLogger("mechakit.grpc")

STREAM_PATH = "/"
"""The route a streamed event carries, as daprd's (every event of the topic goes)."""

_Statuses = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
_ANSWERS = {
    appcallback_pb2.TopicEventResponse.SUCCESS: AppStatus.SUCCESS,
    appcallback_pb2.TopicEventResponse.RETRY: AppStatus.RETRY,
    appcallback_pb2.TopicEventResponse.DROP: AppStatus.DROP,
}


@dataclass(frozen=True)
class _End:
    """What the request reader puts in the outbox when the client is done."""

    error: Exception | None = None


class TopicStreams:
    """The streaming subscriptions of one gRPC API, over the pub/sub components of
    ``pubsub``; :meth:`close` ends them all."""

    def __init__(self, pubsub: PubSubService) -> None:
        self._pubsub = pubsub
        self._streams: set[_Stream] = set()

    @property
    def subscriptions(self) -> list[AppSubscription]:
        """What the open streams receive, one entry per stream."""
        return [stream.subscription for stream in self._streams]

    def close(self) -> None:
        """End every stream: their subscriptions are cancelled, unanswered events unacked."""
        for stream in self._streams:
            stream.end()

    async def serve(
        self, requests: AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1]
    ) -> AsyncIterator[pubsub_pb2.SubscribeTopicEventsResponseAlpha1]:
        """One stream: the initial request from ``requests``, then events out and answers
        in, until either side ends it. Errors are ``DaprError``s for the API to answer."""
        first = await anext(requests, None)
        if first is None:  # the client went away before it asked for anything
            return
        if first.WhichOneof("subscribe_topic_events_request_type") != "initial_request":
            raise invalid(
                "ERR_MALFORMED_REQUEST",
                "the first message of SubscribeTopicEventsAlpha1 must be an initial request",
            )
        subscription = _subscription(first.initial_request)
        pubsub = self._pubsub.component(subscription.pubsub_name)
        stream = _Stream(subscription)
        request = SubscribeRequest(
            topic=subscription.topic,
            metadata=dict(subscription.metadata),
            dead_letter_topic=subscription.dead_letter_topic,
        )
        runtime = self._pubsub.runtime
        policy = runtime.resiliency.inbound(subscription.pubsub_name)
        handler = topic_handler(pubsub.label, subscription, stream.send, policy=policy)
        with failure(
            "ERR_PUBSUB_SUBSCRIBE",
            f"error subscribing to topic {subscription.topic} in pubsub {subscription.pubsub_name}",
            ("pubsub", subscription.pubsub_name),
        ):
            running = await pubsub.subscribe(request, handler)
        self._streams.add(stream)
        log.info("streaming %s", subscription.describe())
        reader = asyncio.create_task(stream.read(requests), name="mechakit stream answers")
        unlist = list_open_stream(runtime, subscription)
        try:
            yield pubsub_pb2.SubscribeTopicEventsResponseAlpha1(
                initial_response=pubsub_pb2.SubscribeTopicEventsResponseInitialAlpha1()
            )
            async for event in stream.events():
                yield event
        finally:
            unlist()
            self._streams.discard(stream)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            # Shielded: a server stop that cancels this stream again must not leave the
            # subscription running.
            await asyncio.shield(stream.finish(running))


def _subscription(initial: pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1) -> AppSubscription:
    if not initial.pubsub_name:
        raise invalid("ERR_PUBSUB_EMPTY", "pubsub name is empty")
    if not initial.topic.strip():
        raise invalid(
            "ERR_TOPIC_NAME_EMPTY",
            f"topic is empty in pubsub {initial.pubsub_name}",
            resource=("pubsub", initial.pubsub_name),
        )
    return AppSubscription(
        pubsub_name=initial.pubsub_name,
        topic=initial.topic,
        default_route=STREAM_PATH,
        dead_letter_topic=initial.dead_letter_topic or None,
        metadata=dict(initial.metadata),
        origin="streaming",
    )


class _Stream:
    """One open stream: events waiting to be written, and the answers they wait for."""

    def __init__(self, subscription: AppSubscription) -> None:
        self.subscription = subscription
        self._outbox: asyncio.Queue[pubsub_pb2.SubscribeTopicEventsResponseAlpha1 | _End] = (
            asyncio.Queue()
        )
        self._waiting: dict[str, collections.deque[asyncio.Future[AppAnswer]]] = {}
        self._ended = False

    async def send(
        self, event: Mapping[str, Any], path: str, subscription: AppSubscription
    ) -> AppAnswer:
        """The ``EventSender`` of this stream's subscription: writes the event, waits for the
        client's answer; cancelled (so never acked) when the stream ends first."""
        if self._ended:
            raise asyncio.CancelledError
        message = codec.topic_event_request(event, path, subscription)
        answer: asyncio.Future[AppAnswer] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(message.id, collections.deque())
        waiting.append(answer)
        try:
            self._outbox.put_nowait(
                pubsub_pb2.SubscribeTopicEventsResponseAlpha1(event_message=message)
            )
            return await answer
        finally:
            with contextlib.suppress(ValueError):
                waiting.remove(answer)
            if not waiting and self._waiting.get(message.id) is waiting:
                del self._waiting[message.id]

    async def events(self) -> AsyncIterator[pubsub_pb2.SubscribeTopicEventsResponseAlpha1]:
        """What to write to the client, until the stream ends; a client error is raised."""
        while True:
            item = await self._outbox.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item

    async def read(
        self, requests: AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1]
    ) -> None:
        """Hands each answer to the event waiting for it, until the client half-closes."""
        error: Exception | None = None
        try:
            async for request in requests:
                if request.WhichOneof("subscribe_topic_events_request_type") != "event_processed":
                    error = invalid(
                        "ERR_MALFORMED_REQUEST",
                        "a SubscribeTopicEventsAlpha1 stream takes one initial request",
                    )
                    break
                self._answer(request.event_processed)
        except Exception as exc:  # the call broke; grpc ends it, this is for the log
            log.debug("%s: reading answers failed: %r", self.subscription.describe(), exc)
        finally:
            self._outbox.put_nowait(_End(error))

    def _answer(self, processed: pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1) -> None:
        waiting = self._waiting.get(processed.id)
        answer = next((f for f in waiting or () if not f.done()), None)
        if answer is None:
            log.warning(
                "%s: answer for event %r, which is not waiting for one; ignored",
                self.subscription.describe(),
                processed.id,
            )
            return
        code = processed.status.status
        status = _ANSWERS.get(code, AppStatus.RETRY)
        word = _Statuses.Name(code) if code in _ANSWERS else f"status {code}"
        answer.set_result(AppAnswer(status, f"stream answered {word}"))

    def end(self) -> None:
        """End the stream from the sidecar's side (it is stopping)."""
        self._outbox.put_nowait(_End())

    async def finish(self, running: Subscription) -> None:
        """Cancel the subscription; events still waiting for an answer are not acked."""
        self._ended = True
        stopping = asyncio.ensure_future(running.cancel())
        await asyncio.sleep(0)  # the subscription stops taking messages before the waits end
        unanswered = 0
        for waiting in list(self._waiting.values()):
            for answer in waiting:
                if not answer.done():
                    answer.cancel()
                    unanswered += 1
        try:
            await stopping
        except Exception as exc:
            log.warning("%s: did not stop cleanly: %r", self.subscription.describe(), exc)
        log.info(
            "stream ended: %s%s",
            self.subscription.describe(),
            f"; {unanswered} unanswered event(s) left for redelivery" if unanswered else "",
        )


__all__ = ["STREAM_PATH", "TopicStreams"]
