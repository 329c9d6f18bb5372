"""The bindings contract: output bindings are invoked; input bindings call a handler."""

from __future__ import annotations

import enum
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .component import Component, SettingsT, Subscription
from .errors import NotSupportedError


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
