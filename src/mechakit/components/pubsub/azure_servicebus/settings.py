"""The metadata of the Service Bus drivers: Dapr's names and defaults, and the checks of
``connectionString`` / ``namespaceName`` that need no broker."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr

from mechakit.core.delivery import DeliveryPolicy, DeliverySettings, dead_letter_topic_setting
from mechakit.core.errors import MetadataError
from mechakit.core.metadata import Bool, setting
from mechakit.core.pubsub import consumer_id_setting

_Seconds = Annotated[int, Field(ge=1)]


class ServiceBusSettings(DeliverySettings):
    connection_string: SecretStr | None = setting(
        None, description="Namespace connection string (or namespaceName with Azure AD)."
    )
    namespace_name: str = setting(
        "", description="Namespace for Azure AD auth (needs azure-identity).",
        example="myns.servicebus.windows.net",
    )  # fmt: skip
    consumer_id: str = consumer_id_setting(
        description="Topics: the subscription each app reads (default: the app id)."
    )
    max_active_messages: _Seconds = setting(
        1000, description="Messages held (locked) at once per subscription.", example="1000"
    )
    max_concurrent_handlers: Annotated[int, Field(ge=0)] = setting(
        0, description="Handler calls at once per subscription (0: maxActiveMessages)."
    )
    lock_renewal_in_sec: _Seconds = setting(
        20, description="Seconds between lock renewals of a message whose handler runs.",
        example="20",
    )  # fmt: skip
    lock_duration_in_sec: _Seconds | None = setting(
        None, description="Lock duration of created entities (server default: 60s)."
    )
    handler_timeout_in_sec: Annotated[int, Field(ge=0)] = setting(
        60, description="Seconds a handler may run with its lock renewed (0: no limit).",
        example="60",
    )  # fmt: skip
    timeout_in_sec: _Seconds = setting(60, description="Timeout of network calls, in seconds.")
    max_deliveries: Annotated[int, Field(ge=1)] = setting(
        10,
        name="maxDeliveryCount",
        aliases=("maxDeliveries",),
        description=(
            "Deliveries before a message goes to the dead-letter topic, else the entity's own "
            "dead-letter queue; also the maxDeliveryCount of created entities."
        ),
        example="10",
    )
    default_message_time_to_live_in_sec: _Seconds | None = setting(
        None, description="Default message TTL of created entities (MESSAGE_TTL)."
    )
    auto_delete_on_idle_in_sec: Annotated[int, Field(ge=300)] | None = setting(
        None, description="Idle time before created subscriptions are deleted (>= 300)."
    )
    disable_entity_management: Bool = setting(
        False, description="Use existing topics, subscriptions and queues only."
    )
    max_retriable_errors_per_sec: Annotated[int, Field(ge=0)] = setting(
        10, description="Accepted for compatibility (the SDK retries itself)."
    )
    min_connection_recovery_in_sec: Annotated[int, Field(ge=0)] = setting(
        2, description="Accepted for compatibility (the engine backs off after errors)."
    )
    max_connection_recovery_in_sec: Annotated[int, Field(ge=0)] = setting(
        300, description="Accepted for compatibility (the engine backs off after errors)."
    )
    publish_max_retries: Annotated[int, Field(ge=0)] = setting(
        5, description="Retries of a failed publish (the SDK's retry_total).", example="5"
    )
    publish_initial_retry_interval_in_ms: Annotated[int, Field(ge=0)] = setting(
        500,
        aliases=("publishInitialRetryInternalInMs",),
        description="First retry wait of a failed publish, in ms (the SDK's backoff).",
    )
    dead_letter_topic: str = dead_letter_topic_setting(
        description="Dead-letter topic for subscriptions that name none (else the broker's DLQ)."
    )

    def delivery_policy(self) -> DeliveryPolicy:
        """Held messages are bounded by maxActiveMessages; exhausted ones without a
        dead-letter topic are abandoned once more, so the broker dead-letters them."""
        return DeliveryPolicy(
            concurrency=self.max_concurrent_handlers or self.max_active_messages,
            prefetch=self.max_active_messages,
            max_deliveries=self.max_deliveries,
            redelivery_delay=1.0,
            max_redelivery_delay=60.0,
            drop_exhausted=False,
            give_up_on_receive=False,
            stop_grace=float(self.lock_renewal_in_sec),
        )

    def endpoint(self, component: str) -> tuple[str, str]:
        """``("connection", <string>)`` or ``("namespace", <fully qualified host>)``, with a
        MetadataError naming the field when neither, both, or a malformed one is given."""
        if self.connection_string is not None and self.namespace_name:
            raise MetadataError(
                "give either 'connectionString' or 'namespaceName', not both",
                component=component,
                field="namespaceName",
            )
        if self.connection_string is not None:
            value = self.connection_string.get_secret_value()
            check_connection_string(value, component)
            return "connection", value
        if self.namespace_name:
            name = self.namespace_name.strip().removeprefix("sb://").rstrip("/")
            if not name or any(c in name for c in "/;= "):
                raise MetadataError(
                    f"namespaceName {self.namespace_name!r} is not a namespace name",
                    component=component,
                    field="namespaceName",
                )
            return "namespace", name if "." in name else f"{name}.servicebus.windows.net"
        raise MetadataError(
            "metadata 'connectionString' or 'namespaceName' is required",
            component=component,
            field="connectionString",
        )


def check_connection_string(value: str, component: str) -> None:
    """``Endpoint=sb://…`` with a shared access key (name and key) or signature; the
    emulator's ``UseDevelopmentEmulator=true`` strings pass too. The value is never shown."""
    parts: dict[str, str] = {}
    for piece in value.split(";"):
        key, sep, item = piece.strip().partition("=")
        if sep:
            parts[key.strip().lower()] = item.strip()
    endpoint = parts.get("endpoint", "")
    problem = ""
    if not endpoint.startswith("sb://") or len(endpoint) <= len("sb://"):
        problem = "has no Endpoint=sb://<namespace>"
    elif "sharedaccesssignature" not in parts and not (
        parts.get("sharedaccesskeyname") and parts.get("sharedaccesskey")
    ):
        problem = "has no SharedAccessKeyName and SharedAccessKey (nor SharedAccessSignature)"
    elif parts.get("entitypath"):
        problem = "names an EntityPath; give the namespace's connection string"
    if problem:
        raise MetadataError(
            f"connectionString {problem}", component=component, field="connectionString"
        )


__all__ = ["ServiceBusSettings", "check_connection_string"]
