"""What every driver is: a class built cheaply, then ``init`` with metadata, then ``close``."""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

from .errors import NotSupportedError
from .metadata import Settings

SettingsT = TypeVar("SettingsT", bound=Settings)
FeatureT = TypeVar("FeatureT", bound=enum.Enum)


@dataclass(frozen=True)
class ComponentMetadata:
    """What a driver is initialised with: its instance name, type string and Dapr metadata."""

    name: str
    type: str
    properties: Mapping[str, str] = field(default_factory=dict)
    version: str = "v1"
    app_id: str = ""
    """The id of the application the component serves (Dapr's default consumer id)."""

    @property
    def label(self) -> str:
        """How errors and logs name the component: ``state.redis 'statestore'``."""
        return f"{self.type} {self.name!r}"


class Component(ABC, Generic[SettingsT]):
    """Base of every driver.

    ``__init__`` does nothing heavy; ``init`` decodes the settings, connects and validates;
    ``close`` releases everything and may be called more than once.
    """

    settings_model: ClassVar[type[Settings]] = Settings
    """The typed metadata model; also the source of docs and the JSON schema."""

    def __init__(self) -> None:
        self._metadata = ComponentMetadata(name="", type="")
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            logging.getLogger("mechakit.component"), {}
        )

    @property
    def metadata(self) -> ComponentMetadata:
        return self._metadata

    @property
    def name(self) -> str:
        return self._metadata.name

    @property
    def label(self) -> str:
        return self._metadata.label

    def decode_settings(self, metadata: ComponentMetadata) -> SettingsT:
        """Remember ``metadata`` and decode it with ``settings_model`` (drivers call this first)."""
        self._metadata = metadata
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"mechakit.{metadata.type}"), {"component": metadata.name}
        )
        settings = self.settings_model.from_metadata(
            metadata.properties, component=metadata.label, log=self.log
        )
        return settings  # type: ignore[return-value]

    @abstractmethod
    async def init(self, metadata: ComponentMetadata) -> None:
        """Decode settings, connect, and fail here (not later) when misconfigured."""

    async def close(self) -> None:
        """Release connections, tasks and files. Safe to call twice."""

    async def ping(self) -> None:
        """Check the backend answers; raise ``ConnectionFailedError`` when it does not."""
        raise NotSupportedError("ping is not supported", component=self.label)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Subscription(ABC):
    """A running subscription (pub/sub topic, input binding, configuration keys)."""

    @abstractmethod
    async def cancel(self) -> None:
        """Stop delivering; returns once no handler call is running. Safe to call twice."""

    @property
    @abstractmethod
    def active(self) -> bool: ...


async def stop_tasks(*tasks: asyncio.Task[Any]) -> None:
    """Cancel until every task has ended.

    Cancelling once is not always enough: a client library (redis-py is one) may swallow a
    cancellation in the middle of a blocking call, and a loop would then run on.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: an error at shutdown is not worth a warning


class Backoff:
    """Doubling waits between failed steps of a long-running loop (receive, reconnect)."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self._first, self._cap, self._delay = first, cap, 0.0

    def next(self) -> float:
        self._delay = min(max(self._delay * 2, self._first), self._cap)
        return self._delay

    def reset(self) -> None:
        self._delay = 0.0


class TaskSubscription(Subscription):
    """A subscription served by one asyncio task, cancelled on ``cancel``."""

    def __init__(
        self, task: asyncio.Task[Any], on_cancel: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._task = task
        self._on_cancel = on_cancel

    @property
    def active(self) -> bool:
        return not self._task.done()

    async def cancel(self) -> None:
        await stop_tasks(self._task)
        if self._on_cancel is not None:
            on_cancel, self._on_cancel = self._on_cancel, None
            await on_cancel()


class FeaturesMixin(Generic[FeatureT]):
    """Declared features: a class constant, overridable per instance (e.g. after probing)."""

    FEATURES: ClassVar[frozenset[Any]] = frozenset()

    def features(self) -> frozenset[FeatureT]:
        return frozenset(self.FEATURES)
