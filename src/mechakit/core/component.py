"""What every driver is: a class built cheaply, then ``init`` with metadata, then ``close``."""

from __future__ import annotations

import asyncio
import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar, get_args, get_origin

from .errors import ComponentError, ComponentNotOpenError, NotSupportedError
from .metadata import Settings

SettingsT = TypeVar("SettingsT", bound=Settings)
FeatureT = TypeVar("FeatureT", bound=enum.Enum)
T = TypeVar("T")


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


class _Lifecycle(enum.Enum):
    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSED = "closed"


_USABLE = (_Lifecycle.OPENING, _Lifecycle.OPEN)


class Component(ABC, Generic[SettingsT]):
    """Base of every driver: built cheaply, opened by ``init``, released by ``close``.

    The settings model is the class's type argument (``class X(StateStore[XSettings])``).
    A driver implements ``open`` (connect and validate, reading ``self.settings``) and
    ``shut`` (release what ``open`` made); ``init`` and ``close`` are the base's and own
    the lifecycle, so every public operation starts with ``require_open``.
    """

    settings_model: type[SettingsT]
    """The typed metadata model, read from the class's type argument; also the source of
    docs and the JSON schema. Set at class definition, never per instance."""

    _overrides_init: ClassVar[bool] = False
    """True for a driver written before ``open``/``shut``: its ``init`` and ``close`` are
    its own, so the base does not know whether it is open."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._overrides_init = cls.init is not Component.init
        argument = _settings_argument(cls)
        declared = cls.__dict__.get("settings_model")
        if declared is not None:
            if not (isinstance(declared, type) and issubclass(declared, Settings)):
                raise TypeError(
                    f"{_qualified(cls)}.settings_model must be a Settings subclass, "
                    f"got {declared!r}"
                )
            if argument is not None and argument is not declared:
                raise TypeError(
                    f"{_qualified(cls)}: settings_model {declared.__name__} disagrees with "
                    f"the type argument {argument.__name__}; drop settings_model, the type "
                    "argument is enough"
                )
        elif argument is not None:
            setattr(cls, "settings_model", argument)  # noqa: B010 (typed per subclass)
        elif not hasattr(cls, "settings_model"):
            setattr(cls, "settings_model", Settings)  # noqa: B010

    def __init__(self) -> None:
        self._metadata = ComponentMetadata(name="", type="")
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            logging.getLogger("mechakit.component"), {}
        )
        self.__settings: SettingsT | None = None
        self.__lifecycle = _Lifecycle.NEW
        self.__tasks: set[asyncio.Task[Any]] = set()

    @property
    def metadata(self) -> ComponentMetadata:
        return self._metadata

    @property
    def name(self) -> str:
        return self._metadata.name

    @property
    def label(self) -> str:
        """``state.redis 'statestore'``; the class name until ``init`` gave it metadata."""
        return self._metadata.label if self._metadata.type else type(self).__name__

    @property
    def settings(self) -> SettingsT:
        """The decoded settings, from the ``open`` step on."""
        settings = self.__settings
        if settings is None:
            raise ComponentNotOpenError(component=self.label)
        return settings

    @property
    def is_open(self) -> bool:
        return self.__lifecycle is _Lifecycle.OPEN

    def require_open(self) -> None:
        """Raise ``ComponentNotOpenError`` unless ``init`` ran (or is running: ``open`` may
        use the operations too) and ``close`` was not called since. Every public operation
        goes through it, directly or through ``opened``.

        A driver that still overrides ``init`` keeps its own checks: this passes for it.
        """
        if self.__lifecycle not in _USABLE and not self._overrides_init:
            raise ComponentNotOpenError(component=self.label)

    def opened(self, resource: T | None) -> T:
        """``resource`` (a client or connection that ``open`` made) after ``require_open``;
        ``ComponentNotOpenError`` also while ``open`` has not made it yet."""
        self.require_open()
        if resource is None:
            raise ComponentNotOpenError(component=self.label)
        return resource

    def decode_settings(self, metadata: ComponentMetadata) -> SettingsT:
        """Bind ``metadata`` and the logger and decode the settings (``self.settings``).

        ``init`` calls it; a driver that still overrides ``init`` calls it first.
        """
        self._metadata = metadata
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"mechakit.{metadata.type}"), {"component": metadata.name}
        )
        self.__settings = self.settings_model.from_metadata(
            metadata.properties, component=metadata.label, log=self.log
        )
        return self.__settings

    async def init(self, metadata: ComponentMetadata) -> None:
        """Decode the settings, run the driver's ``open`` and mark the component open.

        When ``open`` fails (or is cancelled), what it started is released (``shut``) and
        the error raised. Drivers implement ``open``, not this.
        """
        if self.__lifecycle in _USABLE:
            raise ComponentError(
                "init() was already called; close() the component before initialising it again",
                component=self.label,
            )
        self.decode_settings(metadata)
        self.__lifecycle = _Lifecycle.OPENING
        try:
            await self.open()
        except BaseException:
            self.__lifecycle = _Lifecycle.CLOSED
            await self.__release(after_failure=True)
            raise
        if self.__lifecycle is not _Lifecycle.OPENING:  # close() was called meanwhile
            await self.__release(after_failure=True)
            raise ComponentNotOpenError(component=self.label)
        self.__lifecycle = _Lifecycle.OPEN

    async def close(self) -> None:
        """Stop the component's tasks, then run the driver's ``shut``. Safe to call twice."""
        was = self.__lifecycle
        self.__lifecycle = _Lifecycle.CLOSED
        if was in _USABLE:
            await self.__release()

    async def open(self) -> None:
        """The driver's own step of ``init``: connect and validate, and fail here (not later)
        when misconfigured. ``self.settings`` and ``self.label`` are ready."""

    async def shut(self) -> None:
        """The driver's own step of ``close``: release what ``open`` made. Runs also after a
        failed ``open``, so it copes with a half-made state."""

    async def ping(self) -> None:
        """Check the backend answers; raise ``ConnectionFailedError`` when it does not."""
        raise NotSupportedError("ping is not supported", component=self.label)

    def start_task(self, work: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run ``work`` in a task the component owns: ``close`` cancels it before ``shut``."""
        if self.__lifecycle not in _USABLE:
            work.close()
            raise ComponentNotOpenError(component=self.label)
        task = asyncio.create_task(work, name=f"{self.label} {name}")
        self.__tasks.add(task)
        task.add_done_callback(self.__tasks.discard)
        return task

    async def __release(self, *, after_failure: bool = False) -> None:
        tasks, self.__tasks = self.__tasks, set()
        try:
            await stop_tasks(*tasks)
            await self.shut()
        except Exception:
            if not after_failure:
                raise
            self.log.warning(
                "%s: releasing after a failed init failed too", self.label, exc_info=True
            )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _settings_argument(cls: type) -> type[Settings] | None:
    """The Settings class given as the settings type argument of ``cls``'s own bases."""
    found: dict[type[Settings], None] = {}
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, Component)):
            continue
        for parameter, argument in zip(
            getattr(origin, "__parameters__", ()), get_args(base), strict=False
        ):
            if not _is_settings_parameter(parameter) or isinstance(argument, TypeVar):
                continue
            if argument is Any:
                continue
            if not (isinstance(argument, type) and issubclass(argument, Settings)):
                raise TypeError(
                    f"{_qualified(cls)}: the settings type argument of {origin.__name__} "
                    f"must be a Settings subclass, got {argument!r}"
                )
            found[argument] = None
    if len(found) > 1:
        names = " and ".join(model.__name__ for model in found)
        raise TypeError(f"{_qualified(cls)}: its bases name two settings models, {names}")
    return next(iter(found), None)


def _is_settings_parameter(parameter: object) -> bool:
    bound = getattr(parameter, "__bound__", None)
    return (
        isinstance(parameter, TypeVar) and isinstance(bound, type) and issubclass(bound, Settings)
    )


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
    """Declared features: a class constant, overridable per instance (e.g. after probing).

    A capability ABC names the feature it stands for (``class TransactionalStore(StateStore,
    feature=StateFeature.TRANSACTIONAL)``): every class implementing it has that feature in
    ``FEATURES`` without listing it, and a class that lists it without implementing the
    capability is refused when it is defined.
    """

    FEATURES: ClassVar[frozenset[Any]] = frozenset()

    def __init_subclass__(cls, *, feature: enum.Enum | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if feature is not None:
            _CAPABILITIES.append(_Capability(_contract_of(cls), cls, feature))
        declared = cls.__dict__.get("FEATURES", frozenset())
        for capability in _CAPABILITIES:
            if (
                capability.feature in declared
                and issubclass(cls, capability.contract)
                and not issubclass(cls, capability.abc)
            ):
                raise TypeError(
                    f"{_qualified(cls)} declares feature {str(capability.feature)!r} but is "
                    f"not a {capability.abc.__name__}: implement {capability.abc.__name__} "
                    f"or take {str(capability.feature)!r} out of FEATURES"
                )
        implied = {c.feature for c in _CAPABILITIES if issubclass(cls, c.abc)}
        cls.FEATURES = frozenset(cls.FEATURES) | implied

    def features(self) -> frozenset[FeatureT]:
        return frozenset(self.FEATURES)


@dataclass(frozen=True)
class _Capability:
    contract: type
    """The contract the capability extends (``StateStore``): its classes are checked."""
    abc: type
    feature: enum.Enum


_CAPABILITIES: list[_Capability] = []


def _contract_of(capability: type) -> type:
    capabilities = {c.abc for c in _CAPABILITIES}
    for base in capability.__mro__[1:]:
        if base is FeaturesMixin:
            break
        if issubclass(base, FeaturesMixin) and base not in capabilities:
            return base
    raise TypeError(f"{_qualified(capability)}: a capability must extend a contract class")
