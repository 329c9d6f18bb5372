"""The building blocks, one record each: what the registry, the host, the CLI and the
conformance suite know about a category of component.

Adding a building block is adding a record here (and its contract module, suite and client);
nothing else keeps a table of categories.
"""

from __future__ import annotations

import enum
import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@functools.cache
def _load(name: str) -> Any:
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(f"mechakit.core.{module}"), attribute)


@dataclass(frozen=True)
class BuildingBlock:
    """A category's record. Its contract classes and Feature enum are named, and imported
    when first asked for, so that listing categories (``mechakit components list``, the
    registry's type checks) imports no contract module and no pydantic."""

    category: str
    """The first part of a type string: ``state`` in ``state.redis``."""
    noun: str
    """How messages name one: ``state store``."""
    contract_names: tuple[str, ...]
    """``module.Class`` in ``mechakit.core`` of each base class a driver may implement."""
    feature_name: str | None
    """``module.Enum`` of its Feature enum; None when its drivers declare no features."""
    suite: str
    """The conformance test class in ``mechakit/conformance/all_suites.py``."""
    client: str
    """The typed client ``mechakit.open`` hands out (``mechakit.runtime.clients``)."""

    @property
    def contracts(self) -> tuple[type[Any], ...]:
        """The base classes a driver of this category implements (one of them)."""
        return tuple(_load(name) for name in self.contract_names)

    @property
    def features(self) -> type[enum.StrEnum] | None:
        """Its Feature enum; None when drivers of this category declare no features."""
        return None if self.feature_name is None else _load(self.feature_name)


BUILDING_BLOCKS: Mapping[str, BuildingBlock] = {
    block.category: block
    for block in (
        BuildingBlock(
            "state",
            "state store",
            ("state.StateStore",),
            "state.StateFeature",
            "TestState",
            "StateClient",
        ),
        BuildingBlock(
            "pubsub",
            "pub/sub component",
            ("pubsub.PubSub",),
            "pubsub.PubSubFeature",
            "TestPubSub",
            "PubSubClient",
        ),
        BuildingBlock(
            "bindings",
            "binding",
            ("bindings.OutputBinding", "bindings.InputBinding"),
            None,
            "TestBindings",
            "BindingClient",
        ),
        BuildingBlock(
            "secretstores",
            "secret store",
            ("secretstores.SecretStore",),
            "secretstores.SecretStoreFeature",
            "TestSecretStore",
            "SecretsClient",
        ),
        BuildingBlock("lock", "lock store", ("lock.LockStore",), None, "TestLock", "LockClient"),
        BuildingBlock(
            "configuration",
            "configuration store",
            ("configuration.ConfigurationStore",),
            None,
            "TestConfiguration",
            "ConfigurationClient",
        ),
        BuildingBlock(
            "nameresolution",
            "name resolver",
            ("nameresolution.NameResolver",),
            None,
            "TestNameResolution",
            "",
        ),
    )
}

CATEGORIES = tuple(BUILDING_BLOCKS)


def building_block(category: str) -> BuildingBlock | None:
    return BUILDING_BLOCKS.get(category)


__all__ = ["BUILDING_BLOCKS", "CATEGORIES", "BuildingBlock", "building_block"]
