"""The metadata of pubsub.aws.snssqs: Dapr's names, defaults and bounds."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mechakit.components._shared.aws import AwsSettings
from mechakit.core.metadata import Bool, setting
from mechakit.core.pubsub import consumer_id_setting

_DEFAULT_MAX_IN_FLIGHT = 100


class SnsSqsSettings(AwsSettings):
    consumer_id: str = consumer_id_setting(
        description="Names this consumer's SQS queue, shared by its replicas (default: the app id)."
    )
    message_visibility_timeout: Annotated[int, Field(ge=1, le=43200)] = setting(
        10,
        description=(
            "Seconds a received message stays hidden from other consumers; it is extended "
            "while the handler runs, and bounds the redelivery delay of a failed message."
        ),
        example="10",
    )
    message_retry_limit: Annotated[int, Field(ge=0)] = setting(
        10,
        description=(
            "Redeliveries of a failed message before it is given up: moved to the dead-letter "
            "topic or queue, or deleted."
        ),
        example="10",
    )
    message_receive_limit: Annotated[int, Field(ge=1, le=1000)] | None = setting(
        None,
        description=(
            "maxReceiveCount of the redrive policy to sqsDeadLettersQueueName "
            "(default: messageRetryLimit + 1)."
        ),
        example="10",
    )
    sqs_dead_letters_queue_name: str = setting(
        "",
        description="SQS queue that receives messages after messageReceiveLimit receives.",
        example="myapp-dlq",
    )
    disable_delete_on_retry_limit: Bool = setting(
        False,
        description="Keep retrying a message past messageRetryLimit instead of deleting it.",
    )
    message_wait_time_seconds: Annotated[int, Field(ge=0, le=20)] = setting(
        2,
        description="Long-polling wait of each receive call, in seconds.",
        example="2",
    )
    message_max_number: Annotated[int, Field(ge=1, le=10)] = setting(
        10,
        description="Messages fetched per receive call (SQS allows at most 10).",
        example="10",
    )
    fifo: Bool = setting(
        False,
        description="Use FIFO topics and queues (ordered per message group, deduplicated).",
    )
    fifo_message_group_id: str = setting(
        "",
        name="fifoMessageGroupID",
        description=(
            "Message group of published messages unless the request metadata "
            "'fifoMessageGroupID' names one (default: the topic name)."
        ),
        example="app1-mgi",
    )
    disable_entity_management: Bool = setting(
        False,
        description="Use existing topics, queues and subscriptions only; never create them.",
    )
    concurrency_mode: Literal["single", "parallel"] = setting(
        "parallel",
        description="'single' handles one message at a time; 'parallel' up to concurrencyLimit.",
        example="parallel",
    )
    concurrency_limit: Annotated[int, Field(ge=0)] = setting(
        0,
        description=(
            "Handler calls at once in parallel mode (0: no limit, but at most 100 messages "
            "received and not yet handled)."
        ),
        example="10",
    )

    ignored_metadata = frozenset({"assetsmanagementtimeoutseconds", "accountid"})

    @property
    def max_in_flight(self) -> int:
        if self.concurrency_mode == "single":
            return 1
        return self.concurrency_limit or _DEFAULT_MAX_IN_FLIGHT

    @property
    def redrive_max_receive_count(self) -> int:
        return self.message_receive_limit or min(self.message_retry_limit + 1, 1000)


__all__ = ["SnsSqsSettings"]
