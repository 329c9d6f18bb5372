"""What pubsub.mqtt3 and bindings.mqtt3 share: settings, the client id, a reconnecting
aiomqtt connection, and a ``Transport`` that acks (PUBACK) only after the handler succeeded.

Acks: aiomqtt (over paho) acks a QoS 1 message as soon as it arrives. Here the paho client
inside runs with ``manual_ack`` and its ``on_message`` is ours, so a message is acked with
``ack(mid, qos)`` only when the delivery engine settles it; a failed handler's message stays
unacked on the broker and is delivered again in process after a delay (MQTT has no nack).

Sessions: a broker hands a dead client's unacked QoS 1 messages only to a client that takes
over its session, so a subscriber's client id is stable: ``<consumerID>-<instance>-<topic
hash>``, where the instance is ``instanceID`` when given, else ``$MECHAKIT_INSTANCE_ID``,
else a hash of the host name, the working directory and the component name (a restarted
process on the same host, started from the same folder, is the same instance; several
concurrent instances there need distinct values of one of the first two). Sessions persist (``cleanSession`` false, the
Dapr default; MQTT 5: session expiry "never") so a reconnect, a broker restart or a
successor process resumes the subscription with what was left unacked.

aiomqtt and paho are imported when a connection is made, never with this module.
"""

from .connection import Connection, publish, publish_properties
from .settings import (
    TOPIC_METADATA,
    MQTTSettings,
    check_filter,
    check_topic,
    client_id,
    instance_identity,
    plain_filter,
    release_identity,
    shared_filter,
    topic_hash,
)
from .subscriber import Subscriber

__all__ = [
    "TOPIC_METADATA",
    "Connection",
    "MQTTSettings",
    "Subscriber",
    "check_filter",
    "check_topic",
    "client_id",
    "instance_identity",
    "plain_filter",
    "publish",
    "publish_properties",
    "release_identity",
    "shared_filter",
    "topic_hash",
]
