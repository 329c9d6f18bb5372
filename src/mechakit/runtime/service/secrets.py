"""Secrets: the Configuration's secret scopes, once for every door."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mechakit.core.errors import PermissionDeniedError
from mechakit.core.secretstores import BulkGetSecretRequest, GetSecretRequest, SecretStore

from .errors import BlockService, failure, invalid
from .state import MALFORMED

if TYPE_CHECKING:
    pass


class SecretsService(BlockService[SecretStore[Any]]):
    """Secrets, filtered by the secret scopes of the runtime's Configuration."""

    CATEGORY = "secretstores"
    NOT_FOUND = "ERR_SECRET_STORE_NOT_FOUND"
    NOT_FOUND_MESSAGE = "failed finding secret store with key {name}"

    async def get(self, name: str, request: GetSecretRequest) -> dict[str, str]:
        """The secret's keys and values; DENIED outside the scopes, NOT_FOUND when missing."""
        store = self.component(name)
        if not request.name:
            raise invalid(MALFORMED, "the secret name (key) is empty")
        with failure(
            "ERR_SECRET_GET",
            f"failed getting secret with key {request.name} from secret store {name}",
        ):
            if not self._runtime.host.allows_secret(name, request.name):
                raise PermissionDeniedError(
                    f"access to secret {request.name!r} is denied by the secret scopes of the "
                    "Configuration",
                    component=store.label,
                    key=request.name,
                )
            return await self.call(name, lambda: store.get_secret(request))

    async def bulk_get(
        self, name: str, metadata: Mapping[str, str] | None = None
    ) -> dict[str, dict[str, str]]:
        """Every secret the app may read: name → (key → value)."""
        store = self.component(name)
        with failure("ERR_SECRET_GET", f"failed getting secrets from secret store {name}"):
            found = await self.call(
                name,
                lambda: store.bulk_get_secret(BulkGetSecretRequest(metadata=dict(metadata or {}))),
            )
        return {
            secret: values
            for secret, values in found.items()
            if self._runtime.host.allows_secret(name, secret)
        }
