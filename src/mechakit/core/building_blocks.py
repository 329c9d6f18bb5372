"""The building blocks, one record each: what the registry, the host, the CLI and the
conformance suite know about a category of component.

Adding a building block is adding a record here (and its contract module, suite and client);
nothing else keeps a table of categories.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .bindings import InputBinding, OutputBinding
from .configuration import ConfigurationStore
from .lock import LockStore
from .nameresolution import NameResolver
from .pubsub import PubSub, PubSubFeature
from .secretstores import SecretStore, SecretStoreFeature
from .state import StateFeature, StateStore


@dataclass(frozen=True)
class BuildingBlock:
    category: str
    """The first part of a type string: ``state`` in ``state.redis``."""
    noun: str
    """How messages name one: ``state store``."""
    contracts: tuple[type[Any], ...]
    """The base classes a driver of this category implements (one of them)."""
    features: type[enum.StrEnum] | None
    """Its Feature enum; None when drivers of this category declare no features."""
    suite: str
    """The conformance test class in ``mechakit/conformance/all_suites.py``."""
    client: str
    """The typed client ``mechakit.open`` hands out (``mechakit.runtime.clients``)."""


BUILDING_BLOCKS: Mapping[str, BuildingBlock] = {
    block.category: block
    for block in (
        BuildingBlock(
            "state", "state store", (StateStore,), StateFeature, "TestState", "StateClient"
        ),
        BuildingBlock(
            "pubsub", "pub/sub component", (PubSub,), PubSubFeature, "TestPubSub", "PubSubClient"
        ),
        BuildingBlock(
            "bindings",
            "binding",
            (OutputBinding, InputBinding),
            None,
            "TestBindings",
            "BindingClient",
        ),
        BuildingBlock(
            "secretstores",
            "secret store",
            (SecretStore,),
            SecretStoreFeature,
            "TestSecretStore",
            "SecretsClient",
        ),
        BuildingBlock("lock", "lock store", (LockStore,), None, "TestLock", "LockClient"),
        BuildingBlock(
            "configuration",
            "configuration store",
            (ConfigurationStore,),
            None,
            "TestConfiguration",
            "ConfigurationClient",
        ),
        BuildingBlock(
            "nameresolution", "name resolver", (NameResolver,), None, "TestNameResolution", ""
        ),
    )
}

CATEGORIES = tuple(BUILDING_BLOCKS)


def building_block(category: str) -> BuildingBlock | None:
    return BUILDING_BLOCKS.get(category)


__all__ = ["BUILDING_BLOCKS", "CATEGORIES", "BuildingBlock", "building_block"]
