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

The package: ``settings`` (the metadata), ``component`` (``SnsSqsPubSub``: lifecycle,
publish, subscribe), ``entities`` (names, topics, queues, subscriptions, publishing),
``messages`` (the SNS body and attributes, the envelope SQS holds) and ``transport`` (the
SQS queue under the delivery engine).
"""

from .component import SnsSqsPubSub
from .entities import aws_name
from .messages import FIFO_GROUP_METADATA
from .settings import SnsSqsSettings

__all__ = ["FIFO_GROUP_METADATA", "SnsSqsPubSub", "SnsSqsSettings", "aws_name"]
