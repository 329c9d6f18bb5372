"""pubsub.natsstreaming: the old NATS Streaming YAML, run on JetStream.

NATS Streaming (STAN) is gone (Dapr removed the component in 1.13), but its metadata still
sits in users' YAML. This type loads that YAML unchanged and runs it on JetStream, as
``pubsub.jetstream`` does, logging one deprecation warning per component that names
``pubsub.jetstream``. The mapping:

- ``natsURL`` as is; ``natsStreamingClusterID`` is accepted and not used;
- ``subscriptionType: queueGroup`` (the default): the instances of an app id (``consumerID``,
  else the app id, with ``durableSubscriptionName`` appended) share one durable consumer
  per topic, so they share the work; ``topic``: every component instance has its own
  consumer and gets every message;
- ``startAtSequence`` / ``startWithLastReceived`` / ``deliverAll`` / ``deliverNew`` /
  ``startAtTime`` / ``startAtTimeDelta``: the deliver policy of a new consumer (none given:
  new messages only, as STAN did);
- ``ackWaitTime`` is ``ackWait``; ``maxInFlight`` is ``maxAckPending`` and bounds the
  messages read ahead; ``concurrencyMode`` (single or parallel) is ``concurrency``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field

from mechakit.core.delivery import DeliveryPolicy
from mechakit.core.errors import MetadataError
from mechakit.core.metadata import Bool, Duration, setting
from mechakit.core.pubsub import consumer_id_setting

from . import (
    Concurrency,
    JetStreamConfig,
    JetStreamDriver,
    NatsConnectionSettings,
    nats_policy,
)


class NatsStreamingSettings(NatsConnectionSettings):
    nats_streaming_cluster_id: str = setting(
        "", name="natsStreamingClusterID", description="Accepted and not used (JetStream)."
    )
    subscription_type: Literal["queueGroup", "topic"] = setting(
        "queueGroup",
        description="queueGroup: instances of an app id share messages; topic: each gets all.",
        example="queueGroup",
    )
    consumer_id: str = consumer_id_setting(
        description="Queue group of this subscriber (default: the app id)."
    )
    durable_subscription_name: str = setting(
        "", description="Appended to the queue group in the consumer's name."
    )
    start_at_sequence: Annotated[int, Field(ge=1)] | None = setting(None)
    start_with_last_received: Bool = setting(False)
    deliver_all: Bool = setting(False)
    deliver_new: Bool = setting(False)
    start_at_time_delta: Duration | None = setting(None)
    start_at_time: str = setting("", description="Start time (RFC 3339 or epoch seconds).")
    start_at_time_format: str = setting("", description="Accepted and not used.")
    ack_wait_time: Duration = setting(timedelta(seconds=30), example="30s")
    max_in_flight: Annotated[int, Field(ge=1)] = setting(1000, example="1000")
    concurrency: Concurrency = setting(
        10,
        aliases=("concurrencyMode",),
        description="Handler calls at once: single (1), parallel (10) or a number.",
        example="parallel",
    )

    def delivery_policy(self) -> DeliveryPolicy:
        return nats_policy(self, self.ack_wait_time.total_seconds(), self.max_in_flight)


class NatsStreamingPubSub(JetStreamDriver[NatsStreamingSettings]):
    """pubsub.natsstreaming, deprecated: the STAN metadata mapped to JetStream."""

    FEATURES = frozenset()

    def jetstream_config(self) -> JetStreamConfig:
        s = self.settings
        self.log.warning(
            "%s: pubsub.natsstreaming is deprecated (NATS Streaming is end-of-life); it runs "
            "on JetStream here: move to pubsub.jetstream",
            self.label,
        )
        consumer = self.consumer_id(s.consumer_id, names="the queue group")
        if s.durable_subscription_name:
            consumer = f"{consumer}-{s.durable_subscription_name}"
        policy, sequence, start = "new", None, None
        if s.start_at_sequence is not None:
            policy, sequence = "sequence", s.start_at_sequence
        elif s.start_with_last_received:
            policy = "last"
        elif s.deliver_all:
            policy = "all"
        elif s.deliver_new:
            policy = "new"
        elif s.start_at_time_delta is not None:
            policy, start = "time", datetime.now(UTC) - s.start_at_time_delta
        elif s.start_at_time:
            policy, start = "time", self._time(s.start_at_time)
        return JetStreamConfig(
            consumer=consumer,
            per_instance=s.subscription_type == "topic",
            deliver_policy=policy,
            start_sequence=sequence,
            start_time=start,
            ack_wait=s.ack_wait_time.total_seconds(),
            max_ack_pending=s.max_in_flight,
        )

    def _time(self, text: str) -> datetime:
        try:
            if text.strip().replace(".", "", 1).isdigit():
                return datetime.fromtimestamp(float(text), UTC)
            return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise MetadataError(
                f"startAtTime {text!r} is neither RFC 3339 nor epoch seconds",
                component=self.label,
                field="startAtTime",
            ) from None


__all__ = ["NatsStreamingPubSub", "NatsStreamingSettings"]
