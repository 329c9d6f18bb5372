"""The driver base: settings from the type argument, the init/open/shut/close lifecycle it
owns, and features that follow from the capabilities a class implements."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from mechakit.core.component import Component, ComponentMetadata
from mechakit.core.errors import (
    NOT_OPEN,
    ComponentError,
    ComponentNotOpenError,
    ConnectionFailedError,
)
from mechakit.core.metadata import Settings, setting
from mechakit.core.state import (
    DeleteRequest,
    GetRequest,
    Query,
    QueryableStore,
    QueryResponse,
    SetRequest,
    StateFeature,
    StateItem,
    StateSettings,
    StateStore,
    TransactionalStore,
    TransactionOperation,
)


class GreeterSettings(Settings):
    greeting: str = setting("hello", name="greeting")


class Greeter(Component[GreeterSettings]):
    """Records its lifecycle steps; ``fail_open`` makes ``open`` fail after starting work."""

    def __init__(self, *, fail_open: bool = False) -> None:
        super().__init__()
        self.steps: list[str] = []
        self.fail_open = fail_open
        self.started: asyncio.Task[Any] | None = None

    async def open(self) -> None:
        self.steps.append(f"open {self.settings.greeting}")
        self.started = self.start_task(asyncio.Event().wait(), name="waiting")
        if self.fail_open:
            raise ConnectionFailedError("no backend", component=self.label)

    async def shut(self) -> None:
        self.steps.append("shut")

    async def greet(self) -> str:
        self.require_open()
        return self.settings.greeting


def metadata(**properties: str) -> ComponentMetadata:
    return ComponentMetadata("hi", "greeter.test", properties)


# --- settings ---------------------------------------------------------------------------


def test_the_settings_model_is_the_type_argument() -> None:
    assert vars(Greeter)["settings_model"] is GreeterSettings
    assert Greeter().settings_model is GreeterSettings


async def test_init_decodes_the_settings_into_a_typed_attribute() -> None:
    greeter = Greeter()
    await greeter.init(metadata(greeting="hey"))
    greeting: str = greeter.settings.greeting  # typed as GreeterSettings: mypy checks this line
    assert greeting == "hey"
    assert await greeter.greet() == "hey"


def test_a_settings_model_that_disagrees_with_the_type_argument_is_refused() -> None:
    with pytest.raises(TypeError, match="settings_model Settings disagrees with the type argument"):

        class Confused(Component[GreeterSettings]):
            settings_model = Settings  # type: ignore[assignment]  # mypy sees it too


def test_a_type_argument_that_is_not_settings_is_refused() -> None:
    with pytest.raises(TypeError, match="must be a Settings subclass"):

        class Odd(Component[int]):  # type: ignore[type-var]
            pass


def test_a_subclass_inherits_the_settings_model() -> None:
    class LoudGreeter(Greeter):
        pass

    assert LoudGreeter().settings_model is GreeterSettings


# --- lifecycle ------------------------------------------------------------------------


async def test_using_a_component_before_init_is_one_non_retriable_error() -> None:
    with pytest.raises(ComponentNotOpenError) as caught:
        await Greeter().greet()
    assert caught.value.reason == NOT_OPEN
    assert not caught.value.retriable
    assert str(caught.value) == f"Greeter: {NOT_OPEN}"


async def test_close_runs_shut_once_and_using_it_afterwards_is_the_same_error() -> None:
    greeter = Greeter()
    await greeter.init(metadata())
    assert greeter.is_open
    await greeter.close()
    await greeter.close()
    assert greeter.steps == ["open hello", "shut"]
    assert not greeter.is_open
    with pytest.raises(ComponentNotOpenError) as caught:
        await greeter.greet()
    assert str(caught.value) == f"greeter.test 'hi': {NOT_OPEN}"


async def test_close_stops_the_tasks_the_component_started() -> None:
    greeter = Greeter()
    await greeter.init(metadata())
    assert greeter.started is not None and not greeter.started.done()
    await greeter.close()
    assert greeter.started.cancelled()


async def test_a_failed_open_releases_what_it_started_and_leaves_the_component_closed() -> None:
    greeter = Greeter(fail_open=True)
    with pytest.raises(ConnectionFailedError, match="no backend"):
        await greeter.init(metadata())
    assert greeter.steps == ["open hello", "shut"]
    assert greeter.started is not None and greeter.started.cancelled()
    with pytest.raises(ComponentNotOpenError):
        await greeter.greet()


async def test_a_closed_component_can_be_initialised_again() -> None:
    greeter = Greeter()
    await greeter.init(metadata(greeting="one"))
    await greeter.close()
    await greeter.init(metadata(greeting="two"))
    assert await greeter.greet() == "two"


async def test_init_twice_without_close_is_refused() -> None:
    greeter = Greeter()
    await greeter.init(metadata())
    with pytest.raises(ComponentError, match=r"init\(\) was already called"):
        await greeter.init(metadata())
    await greeter.close()


async def test_a_driver_that_still_overrides_init_keeps_working() -> None:
    class OldStyle(Component[GreeterSettings]):
        async def init(self, metadata: ComponentMetadata) -> None:
            self.greeting = self.decode_settings(metadata).greeting

        async def greet(self) -> str:
            self.require_open()  # the base cannot tell whether it is open: it lets it pass
            return self.greeting

    old = OldStyle()
    await old.init(metadata(greeting="hi"))
    assert await old.greet() == "hi"
    assert old.settings.greeting == "hi"


# --- features follow from capabilities -------------------------------------------------


class _Memory(StateStore[StateSettings]):
    async def get(self, request: GetRequest) -> StateItem | None:
        return None

    async def set(self, request: SetRequest) -> None:
        pass

    async def delete(self, request: DeleteRequest) -> None:
        pass


def test_a_store_implementing_a_capability_has_its_feature_without_listing_it() -> None:
    class Both(_Memory, TransactionalStore[StateSettings], QueryableStore[StateSettings]):
        FEATURES = frozenset({StateFeature.ETAG})

        async def transact(
            self,
            operations: Sequence[TransactionOperation],
            metadata: Mapping[str, str] | None = None,
        ) -> None:
            pass

        async def query(self, query: Query) -> QueryResponse:
            return QueryResponse([])

    assert {StateFeature.ETAG, StateFeature.TRANSACTIONAL, StateFeature.QUERY_API} == Both.FEATURES
    assert Both().features() == Both.FEATURES


@pytest.mark.parametrize(
    ("feature", "capability"),
    [
        (StateFeature.TRANSACTIONAL, "TransactionalStore"),
        (StateFeature.QUERY_API, "QueryableStore"),
    ],
)
def test_declaring_a_capability_feature_without_the_capability_fails_at_class_definition(
    feature: StateFeature, capability: str
) -> None:
    with pytest.raises(TypeError) as caught:

        class Boastful(_Memory):
            FEATURES = frozenset({StateFeature.ETAG, feature})

    message = str(caught.value)
    assert "Boastful declares feature" in message
    assert f"{feature.value!r}" in message
    assert f"is not a {capability}" in message


def test_a_feature_without_a_capability_abc_may_be_declared_freely() -> None:
    class WithTTL(_Memory):
        FEATURES = frozenset({StateFeature.TTL, StateFeature.ETAG})

    assert {StateFeature.TTL, StateFeature.ETAG} == WithTTL.FEATURES
