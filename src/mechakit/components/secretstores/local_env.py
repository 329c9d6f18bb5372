"""secretstores.local.env: secrets from this process's environment variables, for development.

Each variable is one secret ``{name: value}``, read when asked (so later changes show). With
``prefix`` only variables starting with it are visible, and, as in Dapr, names are given
without it: with ``prefix: MYAPP_`` the secret ``DB_PASSWORD`` is the variable
``MYAPP_DB_PASSWORD``. Matching is case-sensitive. Like Dapr, the store never exposes
``APP_API_TOKEN`` or variables starting with ``DAPR_``, whatever the prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mechakit.components._shared.requests import secret_name
from mechakit.core.errors import SecretNotFoundError
from mechakit.core.metadata import Settings, setting
from mechakit.core.secretstores import BulkGetSecretRequest, GetSecretRequest, SecretStore


class LocalEnvSettings(Settings):
    prefix: str = setting(
        "",
        description="Only variables starting with this are secrets; it is removed from their names.",
        example="MYAPP_",
    )


class LocalEnvSecretStore(SecretStore[LocalEnvSettings]):
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """``environ`` defaults to ``os.environ``, read live on every call."""
        super().__init__()
        self._environ = os.environ if environ is None else environ

    async def ping(self) -> None:
        self.require_open()

    async def get_secret(self, request: GetSecretRequest) -> dict[str, str]:
        self.require_open()
        prefix = self.settings.prefix
        variable = prefix + secret_name(request, component=self.label)
        value = self._environ.get(variable) if _exposed(variable) else None
        if value is None:
            hint = f" (variable {variable!r})" if prefix else ""
            if not _exposed(variable):
                hint = f" ({variable!r} is never exposed: DAPR_* and APP_API_TOKEN are reserved)"
            raise SecretNotFoundError(
                f"secret {request.name!r} not found{hint}", component=self.label, key=request.name
            )
        return {request.name: value}

    async def bulk_get_secret(self, request: BulkGetSecretRequest) -> dict[str, dict[str, str]]:
        self.require_open()
        prefix = self.settings.prefix
        secrets: dict[str, dict[str, str]] = {}
        for variable, value in list(self._environ.items()):
            name = variable.removeprefix(prefix)
            if variable.startswith(prefix) and name and _exposed(variable):
                secrets[name] = {name: value}
        return secrets


def _exposed(variable: str) -> bool:
    return not variable.startswith("DAPR_") and variable != "APP_API_TOKEN"
