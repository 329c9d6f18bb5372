"""``secretstores.aws.secretsmanager``: secrets from AWS Secrets Manager.

A secret is returned as Dapr does, ``{name: value}`` with the secret's string exactly as
stored: a JSON secret is not split into keys. A binary secret (``SecretBinary``) is
returned base64-encoded. Request metadata ``version_id`` or ``version_stage`` (e.g.
``AWSPREVIOUS``) select a version; the default is ``AWSCURRENT``.

Bulk get lists every secret (``ListSecrets``) and reads each one's current value, several
at a time; a secret deleted between the two steps is left out. A missing secret, a
missing version and a secret scheduled for deletion are ``SecretNotFoundError``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any

from mechakit.components._shared import aws
from mechakit.components._shared.aws import AwsFailure, AwsSettings
from mechakit.core.errors import (
    InvalidRequestError,
    MechakitError,
    SecretNotFoundError,
)
from mechakit.core.secretstores import (
    BulkGetSecretRequest,
    GetSecretRequest,
    SecretStore,
    SecretStoreFeature,
)


class SecretsManagerSettings(AwsSettings):
    pass


class SecretsManagerSecretStore(SecretStore[SecretsManagerSettings]):
    """Dapr's AWS Secrets Manager store: one key per secret, the secret's name."""

    FEATURES = frozenset[SecretStoreFeature]()

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None

    async def open(self) -> None:
        self._client = await aws.client(self.settings, "secretsmanager", component=self.label)

    async def shut(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def ping(self) -> None:
        await aws.call(
            self._secrets.list_secrets, MaxResults=1, component=self.label, action="ping"
        )

    async def get_secret(self, request: GetSecretRequest) -> dict[str, str]:
        if not request.name:
            raise InvalidRequestError(
                "the secret name is empty", component=self.label, field="name"
            )
        version = _version(request.metadata)
        value = await self._read(request.name, version)
        if value is None:
            raise SecretNotFoundError(
                f"secret {request.name!r} has no value", component=self.label, key=request.name
            )
        return {request.name: value}

    async def bulk_get_secret(self, request: BulkGetSecretRequest) -> dict[str, dict[str, str]]:
        names = await aws.call(
            _list_names, self._secrets, component=self.label, action="list secrets"
        )
        limit = asyncio.Semaphore(_PARALLEL_READS)

        async def read(name: str) -> tuple[str, str | None]:
            async with limit:
                try:
                    return name, await self._read(name, {})
                except SecretNotFoundError:
                    return name, None

        results = await asyncio.gather(*(read(n) for n in names))
        return {name: {name: value} for name, value in results if value is not None}

    @property
    def _secrets(self) -> Any:
        return self.opened(self._client)

    async def _read(self, name: str, version: Mapping[str, str]) -> str | None:
        def missing(failure: AwsFailure) -> MechakitError:
            return SecretNotFoundError(
                f"secret {name!r} not found: {failure.message}", component=self.label, key=name
            )

        def invalid(failure: AwsFailure) -> MechakitError:
            if "marked for deletion" in failure.message or "marked deleted" in failure.message:
                return missing(failure)
            return InvalidRequestError(
                f"cannot read secret {name!r}: {failure.message}", component=self.label, key=name
            )

        reply = await aws.call(
            self._secrets.get_secret_value,
            component=self.label,
            action="get secret",
            key=name,
            errors={"ResourceNotFoundException": missing, "InvalidRequestException": invalid},
            SecretId=name,
            **version,
        )
        if reply.get("SecretString") is not None:
            return str(reply["SecretString"])
        if reply.get("SecretBinary") is not None:
            return base64.b64encode(bytes(reply["SecretBinary"])).decode()
        return None


def _version(metadata: Mapping[str, str]) -> dict[str, str]:
    """``VersionId``/``VersionStage`` from Dapr's ``version_id``/``version_stage`` metadata."""
    lowered = {k.lower(): v for k, v in metadata.items() if v}
    version = {}
    if "version_id" in lowered:
        version["VersionId"] = lowered["version_id"]
    if "version_stage" in lowered:
        version["VersionStage"] = lowered["version_stage"]
    return version


def _list_names(client: Any) -> list[str]:
    names: list[str] = []
    for page in client.get_paginator("list_secrets").paginate():
        names.extend(str(s["Name"]) for s in page.get("SecretList", []))
    return names


_PARALLEL_READS = 8

__all__ = ["SecretsManagerSecretStore", "SecretsManagerSettings"]
