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
from mechakit.components._shared.aws import AwsDriver, AwsFailure, AwsSettings
from mechakit.components._shared.requests import metadata_value, secret_name
from mechakit.core.errors import (
    InvalidRequestError,
    MechakitError,
    SecretNotFoundError,
)
from mechakit.core.secretstores import BulkGetSecretRequest, GetSecretRequest, SecretStore


class SecretsManagerSettings(AwsSettings):
    pass


class SecretsManagerSecretStore(
    AwsDriver[SecretsManagerSettings], SecretStore[SecretsManagerSettings]
):
    """Dapr's AWS Secrets Manager store: one key per secret, the secret's name."""

    SERVICE = "secretsmanager"

    async def ping(self) -> None:
        await aws.call(self._aws.list_secrets, MaxResults=1, component=self.label, action="ping")

    async def get_secret(self, request: GetSecretRequest) -> dict[str, str]:
        name = secret_name(request, component=self.label)
        value = await self._read(name, _version(request.metadata))
        if value is None:
            raise SecretNotFoundError(
                f"secret {name!r} has no value", component=self.label, key=name
            )
        return {name: value}

    async def bulk_get_secret(self, request: BulkGetSecretRequest) -> dict[str, dict[str, str]]:
        names = await aws.call(_list_names, self._aws, component=self.label, action="list secrets")
        limit = asyncio.Semaphore(_PARALLEL_READS)

        async def read(name: str) -> tuple[str, str | None]:
            async with limit:
                try:
                    return name, await self._read(name, {})
                except SecretNotFoundError:
                    return name, None

        results = await asyncio.gather(*(read(n) for n in names))
        return {name: {name: value} for name, value in results if value is not None}

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
            self._aws.get_secret_value,
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
    version = {}
    for name, parameter in (("version_id", "VersionId"), ("version_stage", "VersionStage")):
        if value := metadata_value(metadata, name):
            version[parameter] = value
    return version


def _list_names(client: Any) -> list[str]:
    names: list[str] = []
    for page in client.get_paginator("list_secrets").paginate():
        names.extend(str(s["Name"]) for s in page.get("SecretList", []))
    return names


_PARALLEL_READS = 8

__all__ = ["SecretsManagerSecretStore", "SecretsManagerSettings"]
