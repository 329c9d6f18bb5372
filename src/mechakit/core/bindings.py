"""The bindings contract: output bindings are invoked; input bindings call a handler."""

from __future__ import annotations

import enum
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field

from .component import Component, SettingsT, Subscription
from .delivery import DeliveryEngine, DeliveryPolicy
from .errors import NotSupportedError
from .metadata import Settings, setting
from .pubsub import Message, Transport


class OperationKind(enum.StrEnum):
    CREATE = "create"
    GET = "get"
    DELETE = "delete"
    LIST = "list"


@dataclass(frozen=True)
class InvokeRequest:
    operation: str
    data: bytes = b""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InvokeResponse:
    data: bytes = b""
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True)
class BindingEvent:
    data: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)


InputHandler = Callable[[BindingEvent], Awaitable[bytes | None]]
"""Raises to signal that the event was not handled (the binding may redeliver it)."""


class OutputBinding(Component[SettingsT]):
    @abstractmethod
    def operations(self) -> Sequence[str]:
        """The operation names ``invoke`` accepts."""

    @abstractmethod
    async def invoke(self, request: InvokeRequest) -> InvokeResponse: ...

    def check_operation(self, request: InvokeRequest) -> str:
        """The operation, lower-cased; ``NotSupportedError`` naming the supported ones otherwise.

        ``invoke`` starts with it: it also checks that the binding is open (``require_open``).
        """
        self.require_open()
        operation = request.operation.strip().lower()
        supported = [op.lower() for op in self.operations()]
        if operation not in supported:
            raise NotSupportedError(
                f"operation {request.operation!r} is not supported "
                f"(supported: {', '.join(self.operations())})",
                component=self.label,
                field="operation",
            )
        return operation


class InputBinding(Component[SettingsT]):
    @abstractmethod
    async def read(self, handler: InputHandler) -> Subscription:
        """Deliver events to ``handler`` until the returned subscription is cancelled."""


class BrokerReadSettings(Settings):
    """The read settings an input binding over a broker shares with the others:
    ``concurrency`` and, when the binding offers it, ``backOffMaxRetries``
    (:class:`RetriedReadSettings`); :meth:`read_policy` is the engine's policy from them."""

    concurrency: Annotated[int, Field(ge=1)] = setting(
        1,
        description="Handler calls at once (1 keeps the order of arrival; Kafka keeps the "
        "order per key at any value).",
        example="1",
    )

    def read_policy(self, *, prefetch: int, redelivery_delay: float) -> DeliveryPolicy:
        """Failed events come back after ``redelivery_delay``, doubling up to 30 s; a read
        that stops gives running handlers 5 s."""
        return DeliveryPolicy(
            concurrency=self.concurrency,
            prefetch=max(prefetch, self.concurrency),
            max_deliveries=self.max_deliveries(),
            redelivery_delay=redelivery_delay,
            max_redelivery_delay=30.0,
            stop_grace=5.0,
        )

    def max_deliveries(self) -> int:
        """Handler calls of one event at most; 0: until it succeeds."""
        return 0


class RetriedReadSettings(BrokerReadSettings):
    """:class:`BrokerReadSettings` with ``backOffMaxRetries`` bounding the retries."""

    back_off_max_retries: Annotated[int, Field(ge=-1)] = setting(
        -1,
        description="Retries of an event whose handler failed before it is dropped with an "
        "error log; -1: until it succeeds.",
        example="-1",
    )

    def max_deliveries(self) -> int:
        retries = self.back_off_max_retries
        return 0 if retries < 0 else retries + 1


class BindingReads:
    """The reads of an input binding over a broker, one delivery engine each (the pub/sub
    engine of ``core.delivery``): events are the messages' data and metadata (with
    ``contentType`` where the message has one); ``stop`` ends them all, from ``shut``."""

    ROUTE = "binding"

    def __init__(self, component: Component[Any]) -> None:
        self._component = component
        self._engines: set[DeliveryEngine] = set()

    @property
    def reading(self) -> bool:
        """Whether a read is running (not cancelled or stopping)."""
        return any(not e.stopping for e in self._engines)

    def start(
        self, transport: Transport, policy: DeliveryPolicy, handler: InputHandler
    ) -> Subscription:
        """A new read delivering what ``transport`` receives (under ``ROUTE``) to ``handler``."""
        c = self._component
        engine = DeliveryEngine(transport, policy, label=c.label, log=c.log)
        self._engines = {e for e in self._engines if not e.stopping} | {engine}

        async def handle(message: Message) -> None:
            metadata = dict(message.metadata)
            if message.content_type:
                metadata.setdefault("contentType", message.content_type)
            await handler(BindingEvent(data=message.data, metadata=metadata))

        return engine.subscribe(self.ROUTE, handle)

    async def stop(self) -> None:
        engines, self._engines = list(self._engines), set()
        for engine in engines:
            await engine.stop()
