"""pubsub.azure.servicebus.topics and pubsub.azure.servicebus.queues (azure-servicebus, aio).

Status alpha: these drivers are NOT run against a Service Bus broker in mechakit's CI (no
emulator runs there); their conformance row runs where ``MECHAKIT_TEST_SERVICEBUS_
CONNECTION_STRING`` names a namespace. The metadata mapping, the connection settings and
the lock renewal are unit-tested without a broker.

Topics: each app id reads its own subscription ``consumerID`` (default the app id), so
instances of an app id compete and app ids fan out. Queues: one queue per topic name, the
instances of every app compete. Entities are created on first use (with
``maxDeliveryCount``, ``lockDurationInSec``, ``defaultMessageTimeToLiveInSec``,
``autoDeleteOnIdleInSec``) unless ``disableEntityManagement``.

Delivery is the shared engine's (``mechakit.core.delivery``) in peek-lock mode: complete
only after the handler returned; a failed message keeps its lock (renewed) for the
engine's delay and is then abandoned, so Service Bus redelivers it with its count raised;
``maxDeliveryCount`` deliveries move it to the dead-letter topic when one is set, else
the broker's own dead-letter queue takes it. Locks of every held message are renewed by
``AutoLockRenewer`` while its handler runs (handlers longer than the lock, cc#2170), and
at most ``maxActiveMessages`` are held, so none waits unrenewed (dapr#1526). Bulk publish
sends ``ServiceBusMessageBatch``es.
"""

from .component import ServiceBusQueuesPubSub, ServiceBusTopicsPubSub
from .settings import ServiceBusSettings

__all__ = ["ServiceBusQueuesPubSub", "ServiceBusSettings", "ServiceBusTopicsPubSub"]
