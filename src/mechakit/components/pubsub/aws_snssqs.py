"""pubsub.aws.snssqs: a topic is an SNS topic, a consumer (``consumerID``) is one SQS queue.

Names: topic and consumer names are sanitized as Dapr does, so both sides of a Dapr app
meet on the same resources: characters other than letters, digits, ``-`` and ``_`` are
removed, the name is cut to 80 characters, and with ``fifo`` it ends in ``.fifo``. Two
names that differ only in removed characters share a topic. Topic ARNs are cached.

Entities: unless ``disableEntityManagement`` is set, publishing creates the topic,
subscribing creates the queue (and ``sqsDeadLettersQueueName`` with a redrive policy),
subscribes the queue to the topic and adds a queue-policy statement letting only that
topic's ARN send. With it set, nothing is ever created: a missing topic, queue or
subscription is an error naming ``disableEntityManagement`` (or the field naming the
queue).

Publish is one SNS ``Publish``. botocore retries it after a lost answer, which may publish
twice (at-least-once; on FIFO topics content-based deduplication drops the copy, since a
retry, botocore's or the caller's, sends the same body); a publish left without an answer
is a retriable ``OperationTimeoutError`` or ``ConnectionFailedError`` saying it may or may
not have happened. The publisher's metadata travel as String message attributes, so the
subscriber gets them back (upstream loses them) and SNS filter policies can use them; the
content type is the attribute ``contentType``. An empty value is listed in
``mechakit.empty`` (SNS rejects empty attribute values) and data that is not UTF-8 is sent
base64-encoded with ``mechakit.encoding: base64``. Raw message delivery stays off: the SNS
envelope in the SQS body says which topic (``TopicArn``) a message came from and carries
the attributes, so one queue serves every topic of the consumer.

Subscribing: each component runs one receive loop for its queue (long polling
``messageWaitTimeSeconds``, up to ``messageMaxNumber`` per call, in a thread of its own
so a poll never holds up other boto3 calls) and hands each message to the handler of its
topic. A message of a topic without a handler (not subscribed yet, or cancelled) is not
deleted: its visibility is set to its receive count in seconds (at most
``messageVisibilityTimeout``), so it comes back once a handler is there. Those receives
count towards ``ApproximateReceiveCount`` and the redrive policy.

Delivery is at-least-once, by the shared engine (``mechakit.core.delivery``) over the queue
as its transport: ``DeleteMessage`` only after the handler returned (deletes waiting while
one is under way go out together in one batch). While a handler runs its
message's visibility is extended, so a slow handler does not get a duplicate. A failed
message becomes visible again after 1, 2, 4… seconds (at most
``messageVisibilityTimeout``); ``Message.delivery_count`` is ``ApproximateReceiveCount``.
After ``messageRetryLimit`` retries the message goes to the subscription's dead-letter
topic (published there, then deleted); else, with ``sqsDeadLettersQueueName``, SQS's
redrive policy moves it after ``messageReceiveLimit`` receives; else it is deleted with an
error log (kept and retried with ``disableDeleteOnRetryLimit``). ``DropMessage`` deletes
at once. A consumer that dies leaves its messages invisible until the visibility timeout
ends; then another consumer of the queue gets them. A cancelled subscription gives running
handlers ``messageVisibilityTimeout`` to finish and makes the rest visible again at once.

FIFO (``fifo``): FIFO topics and queues with content-based deduplication (identical
bodies published within 5 minutes are delivered once). The message group is the request
metadata ``fifoMessageGroupID``, else the setting, else the topic name; messages of one
group are handled one after another, and after a failure the rest of the group waits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import math
import re
import types
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from mechakit.components._shared.aws import AwsSettings, call, client, map_error
from mechakit.core.component import Subscription, stop_tasks
from mechakit.core.delivery import DeliveryEngine, DeliveryPolicy
from mechakit.core.errors import (
    BulkError,
    ComponentError,
    ComponentNotOpenError,
    InvalidRequestError,
    MetadataError,
    NotFoundError,
    PermissionDeniedError,
)
from mechakit.core.metadata import Bool, setting
from mechakit.core.pubsub import (
    Delivery,
    Handler,
    Message,
    PublishRequest,
    PubSub,
    SubscribeRequest,
    Transport,
)


class SnsSqsSettings(AwsSettings):
    consumer_id: str = setting(
        "",
        name="consumerID",
        description="Names this consumer's SQS queue, shared by its replicas (default: the app id).",
        example="orders-service",
    )
    message_visibility_timeout: Annotated[int, Field(ge=1, le=43200)] = setting(
        10,
        name="messageVisibilityTimeout",
        description=(
            "Seconds a received message stays hidden from other consumers; it is extended "
            "while the handler runs, and bounds the redelivery delay of a failed message."
        ),
        example="10",
    )
    message_retry_limit: Annotated[int, Field(ge=0)] = setting(
        10,
        name="messageRetryLimit",
        description=(
            "Redeliveries of a failed message before it is given up: moved to the dead-letter "
            "topic or queue, or deleted."
        ),
        example="10",
    )
    message_receive_limit: Annotated[int, Field(ge=1, le=1000)] | None = setting(
        None,
        name="messageReceiveLimit",
        description=(
            "maxReceiveCount of the redrive policy to sqsDeadLettersQueueName "
            "(default: messageRetryLimit + 1)."
        ),
        example="10",
    )
    sqs_dead_letters_queue_name: str = setting(
        "",
        name="sqsDeadLettersQueueName",
        description="SQS queue that receives messages after messageReceiveLimit receives.",
        example="myapp-dlq",
    )
    disable_delete_on_retry_limit: Bool = setting(
        False,
        name="disableDeleteOnRetryLimit",
        description="Keep retrying a message past messageRetryLimit instead of deleting it.",
    )
    message_wait_time_seconds: Annotated[int, Field(ge=0, le=20)] = setting(
        2,
        name="messageWaitTimeSeconds",
        description="Long-polling wait of each receive call, in seconds.",
        example="2",
    )
    message_max_number: Annotated[int, Field(ge=1, le=10)] = setting(
        10,
        name="messageMaxNumber",
        description="Messages fetched per receive call (SQS allows at most 10).",
        example="10",
    )
    fifo: Bool = setting(
        False,
        name="fifo",
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
        name="disableEntityManagement",
        description="Use existing topics, queues and subscriptions only; never create them.",
    )
    concurrency_mode: Literal["single", "parallel"] = setting(
        "parallel",
        name="concurrencyMode",
        description="'single' handles one message at a time; 'parallel' up to concurrencyLimit.",
        example="parallel",
    )
    concurrency_limit: Annotated[int, Field(ge=0)] = setting(
        0,
        name="concurrencyLimit",
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


# --- the component ----------------------------------------------------------------------


class SnsSqsPubSub(PubSub[SnsSqsSettings]):
    """Dapr's SNS/SQS pub/sub that keeps metadata and never drops unhandled messages."""

    def __init__(self) -> None:
        super().__init__()
        self._clients: list[Any] = []
        """The boto3 clients made so far (closed by ``shut``, also after a failed ``open``)."""
        self._entities: Entities | None = None
        self._receiver: tuple[QueueTransport, DeliveryEngine] | None = None
        """The queue's transport and engine, while some topic has a handler."""

    async def open(self) -> None:
        settings = self.settings
        consumer_id = settings.consumer_id or self.metadata.app_id
        if not consumer_id:
            raise MetadataError(
                "metadata 'consumerID' is required when the component has no app id "
                "(it names the SQS queue)",
                component=self.label,
                field="consumerID",
            )
        if not aws_name(consumer_id, settings.fifo).removesuffix(_FIFO):
            raise MetadataError(
                f"metadata 'consumerID' {consumer_id!r} has no letter, digit, '-' or '_' "
                "to name an SQS queue with",
                component=self.label,
                field="consumerID",
            )
        if settings.disable_delete_on_retry_limit and settings.sqs_dead_letters_queue_name:
            raise MetadataError(
                "metadata 'disableDeleteOnRetryLimit' cannot be true while "
                "'sqsDeadLettersQueueName' is set (the redrive policy removes the message)",
                component=self.label,
                field="disableDeleteOnRetryLimit",
            )
        sns = await client(settings, "sns", component=self.label)
        self._clients.append(sns)
        sqs = await client(settings, "sqs", component=self.label)
        self._clients.append(sqs)
        entities = Entities(sns, sqs, settings, consumer_id, label=self.label, log=self.log)
        self._entities = entities
        if settings.disable_entity_management:
            await entities.queue()

    async def shut(self) -> None:
        """Stops the queue's subscriptions (handlers get messageVisibilityTimeout), then
        closes the clients."""
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            await receiver[1].stop()
        self._entities = None
        clients, self._clients = self._clients, []
        for made in clients:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(made.close)

    async def ping(self) -> None:
        entities = self._opened()
        await entities.call(entities.sqs.list_queues, "ping", MaxResults=1)

    @property
    def queue_name(self) -> str:
        """The SQS queue of this consumer (consumerID, sanitized)."""
        return self._opened().queue_name

    async def publish(self, request: PublishRequest) -> None:
        entities = self._opened()
        group = request.metadata.get(FIFO_GROUP_METADATA) or self.settings.fifo_message_group_id
        await entities.send(
            request.topic, request.data, request.content_type, request.metadata, group
        )

    async def subscribe(self, request: SubscribeRequest, handler: Handler) -> Subscription:
        entities = self._opened()
        topic_arn = await entities.topic_arn(request.topic)
        queue = await entities.queue()
        await entities.connect(topic_arn, request.topic, queue)
        if self._opened() is not entities:  # closed (and opened again) meanwhile
            raise ComponentNotOpenError(component=self.label)
        if self._receiver is None or self._receiver[1].stopping:
            transport = QueueTransport(entities, queue, forget=self._forget)
            policy = delivery_policy(entities.settings)
            engine = DeliveryEngine(transport, policy, label=self.label, log=self.log)
            self._receiver = (transport, engine)
        transport, engine = self._receiver
        if topic_arn in transport.topics:
            raise InvalidRequestError(
                f"topic {request.topic!r} already has a handler on this component (one SQS "
                "queue delivers each message once per consumerID; use another consumerID for a "
                "second subscriber)",
                component=self.label,
                key=request.topic,
            )
        route = engine.subscribe(
            request.topic, handler, dead_letter_topic=request.dead_letter_topic or ""
        )
        transport.topics[topic_arn] = request.topic
        return TopicSubscription(transport, topic_arn, route)

    def _opened(self) -> Entities:
        return self.opened(self._entities)

    def _forget(self, transport: QueueTransport) -> None:
        if self._receiver is not None and self._receiver[0] is transport:
            self._receiver = None


# --- naming and entities ---------------------------------------------------------------


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


# --- messages --------------------------------------------------------------------------


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


# --- the SQS queue as the delivery engine's transport -----------------------------------


class TopicSubscription(Subscription):
    """One topic's route on the queue's engine; the queue keeps receiving its messages."""

    def __init__(self, queue: QueueTransport, topic_arn: str, route: Subscription) -> None:
        self._queue = queue
        self._topic_arn = topic_arn
        self._route = route
        self._cancelled = False

    @property
    def active(self) -> bool:
        return not self._cancelled and self._route.active

    async def cancel(self) -> None:
        """From now on this topic's messages wait in the queue until it has a handler again."""
        if not self._cancelled:
            self._cancelled = True
            self._queue.topics.pop(self._topic_arn, None)
        await self._route.cancel()


class QueueTransport(Transport):
    """This consumer's SQS queue: long polls in a thread of its own, deletes, visibility.

    Messages being handled are kept invisible (renewed every half visibility timeout), so a
    slow handler gets no duplicate; a message of a topic without a handler is not deleted but
    made visible again after its receive count in seconds.
    """

    def __init__(
        self,
        entities: Entities,
        queue: Queue,
        *,
        forget: Callable[[QueueTransport], None],
    ) -> None:
        self.source = f"SQS queue {queue.name!r}"
        self.topics: dict[str, str] = {}
        """Topic ARN → the topic name as subscribed, for the topics with a handler."""
        self._entities = entities
        self._queue = queue
        self._sqs = entities.sqs
        self._label = entities.label
        self._log = entities.log
        self._forget = forget
        """Called once closed: the component then makes a new transport for a new subscriber."""
        self._held: dict[str, Delivery] = {}
        """Received and not yet settled, by SQS message id: kept invisible."""
        self._poller = ThreadPoolExecutor(1, thread_name_prefix=f"sqs-poll-{queue.name}")
        self._poll: asyncio.Future[Any] | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_loop(), name=f"renew {self.source}")
        reply = await self._receive(min(max_count, self._entities.settings.message_max_number))
        return await self._accept(reply.get("Messages") or [])

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """DeleteMessageBatch, ten at a time; failures are reported per message."""
        for delivery in deliveries:
            self._held.pop(delivery.key, None)
        failed: dict[str, Exception] = {}
        for start in range(0, len(deliveries), 10):
            batch = deliveries[start : start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": d.receipt} for i, d in enumerate(batch)]
            try:
                reply = await call(
                    self._sqs.delete_message_batch,
                    component=self._label,
                    action=f"delete messages from SQS queue {self._queue.name!r}",
                    QueueUrl=self._queue.url,
                    Entries=entries,
                )
            except Exception as exc:
                failed.update((d.key, exc) for d in batch)
                continue
            for item in reply.get("Failed") or []:
                reason = str(item.get("Message") or item.get("Code"))
                failed[batch[int(item["Id"])].key] = ComponentError(reason, component=self._label)
        if failed:
            raise BulkError(failed, component=self._label)

    async def retry_later(self, delivery: Delivery, delay: float) -> None:
        self._held.pop(delivery.key, None)
        await self._set_visibility([(delivery.receipt, math.ceil(delay))])

    async def dead_letter(self, delivery: Delivery, topic: str) -> None:
        """Publishes a copy (metadata and content type too), in the message's FIFO group."""
        message = delivery.message
        await self._entities.send(
            topic, message.data, message.content_type, message.metadata, delivery.ordering_key
        )

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._held.pop(delivery.key, None)
        await self._set_visibility([(d.receipt, 0) for d in deliveries])

    async def close(self) -> None:
        try:
            await self._give_back_last_poll()
            left, self._held = list(self._held.values()), {}
            await self._set_visibility_or_log([(d.receipt, 0) for d in left])
        finally:
            if self._renewer is not None:
                await stop_tasks(self._renewer)
            self._poller.shutdown(wait=False, cancel_futures=True)
            self._forget(self)

    async def _receive(self, count: int) -> Any:
        settings = self._entities.settings
        loop = asyncio.get_running_loop()
        self._poll = loop.run_in_executor(
            self._poller,
            functools.partial(
                self._sqs.receive_message,
                QueueUrl=self._queue.url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=settings.message_wait_time_seconds,
                VisibilityTimeout=settings.message_visibility_timeout,
                AttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
                MessageAttributeNames=["All"],
            ),
        )
        try:
            result = await asyncio.shield(self._poll)  # cut short: close() gives it back
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._poll = None
            raise map_error(
                exc, component=self._label, action=f"receive from SQS queue {self._queue.name!r}"
            ) from exc
        self._poll = None
        return result

    async def _give_back_last_poll(self) -> None:
        """Waits for a poll cut short by stopping and makes what it got visible again."""
        poll, self._poll = self._poll, None
        if poll is None:
            return
        wait = self._entities.settings.message_wait_time_seconds + 5
        try:
            reply = await asyncio.wait_for(asyncio.shield(poll), wait)
        except Exception:
            return
        receipts = [m["ReceiptHandle"] for m in reply.get("Messages") or []]
        await self._set_visibility_or_log([(r, 0) for r in receipts])

    async def _accept(self, messages: Sequence[Mapping[str, Any]]) -> list[Delivery]:
        deliveries: list[Delivery] = []
        bounce: list[tuple[str, int]] = []
        vis = self._entities.settings.message_visibility_timeout
        for raw in messages:
            attributes = raw.get("Attributes") or {}
            count = max(int(attributes.get("ApproximateReceiveCount", 1)), 1)
            sqs_id = str(raw.get("MessageId", ""))
            receipt = str(raw["ReceiptHandle"])
            held = self._held.get(sqs_id)
            if held is not None:
                held.receipt = receipt  # received again while still being handled here
                continue
            envelope = Envelope.parse(str(raw.get("Body", "")))
            topic = self.topics.get(envelope.topic_arn) if envelope is not None else None
            if envelope is None or topic is None:
                if envelope is None:
                    self._log.warning(
                        "%s: message %s in SQS queue %r is not an SNS notification (raw "
                        "delivery on, or sent to the queue directly); it is left to the "
                        "queue's redrive policy",
                        self._label,
                        sqs_id,
                        self._queue.name,
                    )
                bounce.append((receipt, min(count, vis)))
                continue
            delivery = Delivery(
                envelope.message(topic, count),
                receipt=receipt,
                ordering_key=attributes.get("MessageGroupId"),
                key=sqs_id,
            )
            self._held[sqs_id] = delivery
            deliveries.append(delivery)
        # Held before this await: if stopping cuts it short, close() gives them back.
        await self._set_visibility_or_log(bounce)
        return deliveries

    async def _renew_loop(self) -> None:
        """Keeps held messages invisible, so a slow handler does not get a duplicate."""
        vis = self._entities.settings.message_visibility_timeout
        every = max(vis / 2, 0.5)
        while True:
            await asyncio.sleep(every)
            await self._set_visibility_or_log([(d.receipt, vis) for d in self._held.values()])

    async def _set_visibility(self, changes: Sequence[tuple[str, int]]) -> None:
        for start in range(0, len(changes), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
                for i, (receipt, seconds) in enumerate(changes[start : start + 10])
            ]
            await call(
                self._sqs.change_message_visibility_batch,
                component=self._label,
                action=f"change message visibility in SQS queue {self._queue.name!r}",
                QueueUrl=self._queue.url,
                Entries=entries,
            )

    async def _set_visibility_or_log(self, changes: Sequence[tuple[str, int]]) -> None:
        try:
            await self._set_visibility(changes)
        except Exception as exc:
            self._log.warning(
                "%s: could not change the visibility of %d message(s) in SQS queue %r: %s",
                self._label,
                len(changes),
                self._queue.name,
                exc,
            )


def delivery_policy(settings: SnsSqsSettings) -> DeliveryPolicy:
    """Redelivery after 1, 2, 4… s (at most the visibility timeout) after a failure.

    ApproximateReceiveCount also counts receives of a topic without a handler, so a message
    is never given up before its handler saw it; with a dead-letter queue, or when failed
    messages are kept, the queue's redrive policy (or nothing) ends its retries.
    """
    visibility = float(settings.message_visibility_timeout)
    return DeliveryPolicy(
        concurrency=settings.max_in_flight,
        max_deliveries=settings.message_retry_limit + 1,
        redelivery_delay=1.0,
        max_redelivery_delay=visibility,
        drop_exhausted=not (
            settings.sqs_dead_letters_queue_name or settings.disable_delete_on_retry_limit
        ),
        give_up_on_receive=False,
        stop_grace=visibility,
    )


FIFO_GROUP_METADATA = "fifoMessageGroupID"
"""Request metadata choosing the FIFO message group of one published message."""

_DEFAULT_MAX_IN_FLIGHT = 100
_MAX_NAME = 80
_FIFO = ".fifo"
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}(?<!\.)|[A-Za-z0-9_-]")
_RESERVED = ("AWS.", "Amazon.", "mechakit.")
_CONTENT_TYPE = "contentType"
_ENCODING = "mechakit.encoding"
_EMPTY = "mechakit.empty"
_NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")

__all__ = ["FIFO_GROUP_METADATA", "SnsSqsPubSub", "SnsSqsSettings", "aws_name"]
