"""SNS topics and SQS queues of pubsub.aws.snssqs: Dapr's sanitized names, and the entities
found, or created unless ``disableEntityManagement``; publishing goes through here."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mechakit.components._shared.aws import call
from mechakit.core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError

from .messages import encode
from .settings import SnsSqsSettings


@dataclass(frozen=True)
class Queue:
    name: str
    url: str
    arn: str


class Entities:
    """The SNS and SQS clients of one open component and the entities it uses: topic ARNs
    (cached), its queue, the queue's subscriptions; found, or created unless
    ``disableEntityManagement``. Publishing goes through here too, as a topic may be gone.

    The component's operations reach it through ``opened``; a transport holds it, so a
    subscription that ``close`` stops still settles and dead-letters.
    """

    def __init__(
        self,
        sns: Any,
        sqs: Any,
        settings: SnsSqsSettings,
        consumer_id: str,
        *,
        label: str,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.sns = sns
        self.sqs = sqs
        self.settings = settings
        self.label = label
        self.log = log
        self.queue_name = aws_name(consumer_id, settings.fifo)
        """The SQS queue of this consumer (consumerID, sanitized)."""
        self._topic_arns: dict[str, str] = {}
        """Sanitized topic name → ARN."""
        self._queue: Queue | None = None
        self._subscribed_arns: set[str] = set()
        self._lock = asyncio.Lock()

    async def call(
        self, fn: Callable[..., Any], action: str, /, *args: Any, key: str | None = None, **kw: Any
    ) -> Any:
        return await call(fn, *args, component=self.label, action=action, key=key, **kw)

    # --- publishing ---------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        data: bytes,
        content_type: str | None,
        metadata: Mapping[str, str],
        group: str | None = None,
    ) -> None:
        """Publishes one message; on FIFO topics in message group ``group`` (default: the
        topic name)."""
        body, attributes = encode(topic, data, content_type, metadata, component=self.label)
        extra = {"MessageGroupId": group or topic} if self.settings.fifo else {}
        await self._publish(topic, body, attributes, extra)

    async def _publish(
        self,
        topic: str,
        body: str,
        attributes: Mapping[str, Mapping[str, str]],
        extra: Mapping[str, Any],
    ) -> None:
        for attempt in (1, 2):
            topic_arn = await self.topic_arn(topic)
            try:
                await self.call(
                    self.sns.publish,
                    f"publish to {topic!r}",
                    key=topic,
                    errors={"NotFound": _gone},
                    TopicArn=topic_arn,
                    Message=body,
                    MessageAttributes=attributes,
                    **extra,
                )
                return
            except _TopicGone:
                self._topic_arns.pop(aws_name(topic, self.settings.fifo), None)
                if attempt == 2 or self.settings.disable_entity_management:
                    raise self._missing_topic(topic) from None

    # --- entities -----------------------------------------------------------------------

    async def topic_arn(self, topic: str) -> str:
        settings = self.settings
        name = aws_name(topic, settings.fifo)
        if not name.removesuffix(_FIFO):
            raise InvalidRequestError(
                f"topic {topic!r} has no letter, digit, '-' or '_' to name an SNS topic with",
                component=self.label,
                key=topic,
            )
        cached = self._topic_arns.get(name)
        if cached is not None:
            return cached
        if settings.disable_entity_management:
            found = await self.call(
                _find_topic, f"find SNS topic {name!r}", self.sns, name, key=topic
            )
            if found is None:
                raise self._missing_topic(topic)
            arn = str(found)
        else:
            fifo: dict[str, Any] = {
                "Attributes": {"FifoTopic": "true", "ContentBasedDeduplication": "true"}
            }
            reply = await self.call(
                self.sns.create_topic,
                f"create SNS topic {name!r}",
                key=topic,
                Name=name,
                **(fifo if settings.fifo else {}),
            )
            arn = str(reply["TopicArn"])
        self._topic_arns[name] = arn
        return arn

    def _missing_topic(self, topic: str) -> NotFoundError:
        name = aws_name(topic, self.settings.fifo)
        return NotFoundError(
            f"SNS topic {name!r} (topic {topic!r}) does not exist, and metadata "
            "'disableEntityManagement' is true, so it is not created",
            component=self.label,
            key=topic,
            field="disableEntityManagement",
        )

    async def queue(self) -> Queue:
        """This consumer's queue (and its dead-letter queue), created unless disabled."""
        async with self._lock:
            if self._queue is not None:
                return self._queue
            settings = self.settings
            queue = await self._ensure_queue(self.queue_name, "consumerID")
            if settings.sqs_dead_letters_queue_name:
                dead = await self._ensure_queue(
                    aws_name(settings.sqs_dead_letters_queue_name, settings.fifo),
                    "sqsDeadLettersQueueName",
                )
                if not settings.disable_entity_management:
                    policy = {
                        "deadLetterTargetArn": dead.arn,
                        "maxReceiveCount": str(settings.redrive_max_receive_count),
                    }
                    await self.call(
                        self.sqs.set_queue_attributes,
                        f"set the redrive policy of SQS queue {queue.name!r}",
                        QueueUrl=queue.url,
                        Attributes={"RedrivePolicy": json.dumps(policy)},
                    )
            self._queue = queue
            return queue

    async def _ensure_queue(self, name: str, field_name: str) -> Queue:
        settings, sqs = self.settings, self.sqs
        if settings.disable_entity_management:
            missing = NotFoundError(
                f"SQS queue {name!r} (metadata {field_name!r}) does not exist, and metadata "
                "'disableEntityManagement' is true, so it is not created",
                component=self.label,
                field=field_name,
            )
            reply = await self.call(
                sqs.get_queue_url,
                f"find SQS queue {name!r}",
                errors={code: lambda _f: missing for code in _NO_QUEUE},
                QueueName=name,
            )
        else:
            fifo: dict[str, Any] = {
                "Attributes": {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
            }
            reply = await self.call(
                sqs.create_queue,
                f"create SQS queue {name!r}",
                QueueName=name,
                **(fifo if settings.fifo else {}),
            )
        url = str(reply["QueueUrl"])
        found = await self.call(
            sqs.get_queue_attributes,
            f"read the attributes of SQS queue {name!r}",
            QueueUrl=url,
            AttributeNames=["QueueArn"],
        )
        return Queue(name, url, str(found["Attributes"]["QueueArn"]))

    async def connect(self, topic_arn: str, topic: str, queue: Queue) -> None:
        """Lets the topic send to the queue and subscribes the queue to it (once)."""
        async with self._lock:
            if topic_arn in self._subscribed_arns:
                return
            if self.settings.disable_entity_management:
                await self._check_subscription(topic_arn, topic, queue)
            else:
                await self.call(
                    _allow_topic,
                    f"allow topic {topic!r} in the policy of SQS queue {queue.name!r}",
                    self.sqs,
                    queue,
                    topic_arn,
                    key=topic,
                )
                await self.call(
                    self.sns.subscribe,
                    f"subscribe SQS queue {queue.name!r} to topic {topic!r}",
                    key=topic,
                    TopicArn=topic_arn,
                    Protocol="sqs",
                    Endpoint=queue.arn,
                    ReturnSubscriptionArn=True,
                )
            self._subscribed_arns.add(topic_arn)

    async def _check_subscription(self, topic_arn: str, topic: str, queue: Queue) -> None:
        try:
            endpoints = await self.call(
                _subscribed_endpoints,
                f"list the subscriptions of topic {topic!r}",
                self.sns,
                topic_arn,
                key=topic,
            )
        except PermissionDeniedError as exc:
            self.log.warning(
                "%s: cannot check that SQS queue %r is subscribed to topic %r (%s); assuming it is",
                self.label,
                queue.name,
                topic,
                exc,
            )
            return
        if queue.arn not in endpoints:
            raise NotFoundError(
                f"SQS queue {queue.name!r} is not subscribed to SNS topic {topic_arn!r}, and "
                "metadata 'disableEntityManagement' is true, so the subscription is not created",
                component=self.label,
                key=topic,
                field="disableEntityManagement",
            )


class _TopicGone(NotFoundError):
    """The cached topic ARN no longer exists."""


def _gone(found: Any) -> _TopicGone:
    return _TopicGone(found.message or "topic not found")


def aws_name(name: str, fifo: bool) -> str:
    """Dapr's sanitized SNS/SQS name: letters, digits, '-', '_'; <= 80 chars with '.fifo'."""
    kept = _NOT_ALLOWED.sub("", name)
    if fifo:
        return kept[: _MAX_NAME - len(_FIFO)] + _FIFO
    return kept[:_MAX_NAME]


def _find_topic(sns: Any, name: str) -> str | None:
    for page in sns.get_paginator("list_topics").paginate():
        for topic in page.get("Topics") or []:
            arn = str(topic.get("TopicArn", ""))
            if arn.rsplit(":", 1)[-1] == name:
                return arn
    return None


def _subscribed_endpoints(sns: Any, topic_arn: str) -> set[str]:
    endpoints: set[str] = set()
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
        for subscription in page.get("Subscriptions") or []:
            if subscription.get("Protocol") == "sqs":
                endpoints.add(str(subscription.get("Endpoint", "")))
    return endpoints


def _allow_topic(sqs: Any, queue: Queue, topic_arn: str) -> None:
    """Adds a statement letting ``topic_arn`` send to the queue, unless one is there."""
    reply = sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["Policy"])
    text = (reply.get("Attributes") or {}).get("Policy")
    policy: dict[str, Any] = json.loads(text) if text else {}
    policy.setdefault("Version", "2012-10-17")
    statements = policy.setdefault("Statement", [])
    if isinstance(statements, dict):
        statements = policy["Statement"] = [statements]
    for statement in statements:
        condition = (statement.get("Condition") or {}).get("ArnEquals") or {}
        if condition.get("aws:SourceArn") == topic_arn:
            return
    statements.append(
        {
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue.arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
        }
    )
    sqs.set_queue_attributes(QueueUrl=queue.url, Attributes={"Policy": json.dumps(policy)})


_MAX_NAME = 80
_FIFO = ".fifo"
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
_NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")

__all__ = ["Entities", "Queue", "aws_name"]
