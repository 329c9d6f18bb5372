"""The secret store contract: a secret is a map of key → value."""

from __future__ import annotations

import enum
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from .component import Component, FeaturesMixin, SettingsT


class SecretStoreFeature(enum.StrEnum):
    MULTIPLE_KEY_VALUES_PER_SECRET = "MULTIPLE_KEY_VALUES_PER_SECRET"


@dataclass(frozen=True)
class GetSecretRequest:
    name: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BulkGetSecretRequest:
    metadata: Mapping[str, str] = field(default_factory=dict)


class SecretStore(FeaturesMixin[SecretStoreFeature], Component[SettingsT]):
    @abstractmethod
    async def get_secret(self, request: GetSecretRequest) -> dict[str, str]:
        """The secret's keys and values; ``SecretNotFoundError`` when it does not exist."""

    @abstractmethod
    async def bulk_get_secret(self, request: BulkGetSecretRequest) -> dict[str, dict[str, str]]:
        """Every secret the store holds: name → (key → value)."""
