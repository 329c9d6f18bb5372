"""``secretstores.aws.parameterstore``: secrets from AWS Systems Manager Parameter Store.

The secret ``name`` is the parameter ``prefix + name`` and is returned as Dapr does,
``{name: value}``, decrypted (``SecureString``) and exactly as stored (a ``StringList`` stays
comma separated). Request metadata ``version_id`` selects a version (``name:version``).

Bulk get finds every parameter whose name starts with ``prefix`` (``DescribeParameters``)
and reads them ten at a time (``GetParameters``), returning them under their names without
the prefix. A missing parameter or version is ``SecretNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mechakit.components._shared import aws
from mechakit.components._shared.aws import AwsDriver, AwsFailure, AwsSettings
from mechakit.components._shared.requests import metadata_value, secret_name
from mechakit.core.errors import MechakitError, SecretNotFoundError
from mechakit.core.metadata import setting
from mechakit.core.secretstores import BulkGetSecretRequest, GetSecretRequest, SecretStore


class ParameterStoreSettings(AwsSettings):
    prefix: str = setting(
        "",
        description="Added to every secret name; bulk get returns only parameters under it.",
        example="/myapp/prod/",
    )


class ParameterStoreSecretStore(
    AwsDriver[ParameterStoreSettings], SecretStore[ParameterStoreSettings]
):
    """Dapr's AWS SSM Parameter Store: one key per secret, the secret's name."""

    SERVICE = "ssm"

    async def ping(self) -> None:
        await aws.call(
            self._aws.describe_parameters, MaxResults=1, component=self.label, action="ping"
        )

    async def get_secret(self, request: GetSecretRequest) -> dict[str, str]:
        parameter = self.settings.prefix + secret_name(request, component=self.label)
        version = metadata_value(request.metadata, "version_id")
        if version:
            parameter = f"{parameter}:{version}"

        def missing(failure: AwsFailure) -> MechakitError:
            return SecretNotFoundError(
                f"secret {request.name!r} not found (parameter {parameter!r})",
                component=self.label,
                key=request.name,
            )

        reply = await aws.call(
            self._aws.get_parameter,
            component=self.label,
            action="get secret",
            key=request.name,
            errors={
                "ParameterNotFound": missing,
                "ParameterVersionNotFound": missing,
            },
            Name=parameter,
            WithDecryption=True,
        )
        return {request.name: str(reply["Parameter"]["Value"])}

    async def bulk_get_secret(self, request: BulkGetSecretRequest) -> dict[str, dict[str, str]]:
        values: Mapping[str, str] = await aws.call(
            _read_all,
            self._aws,
            self.settings.prefix,
            component=self.label,
            action="bulk get secrets",
        )
        secrets = {}
        for parameter, value in values.items():
            name = parameter[len(self.settings.prefix) :]
            if name:
                secrets[name] = {name: value}
        return secrets


def _read_all(client: Any, prefix: str) -> dict[str, str]:
    """Every parameter whose name starts with ``prefix``: name -> decrypted value."""
    names: list[str] = []
    options: dict[str, Any] = {}
    if prefix:
        options["ParameterFilters"] = [{"Key": "Name", "Option": "BeginsWith", "Values": [prefix]}]
    for page in client.get_paginator("describe_parameters").paginate(**options):
        names.extend(str(p["Name"]) for p in page.get("Parameters", []))
    values: dict[str, str] = {}
    for start in range(0, len(names), _GET_PARAMETERS_LIMIT):
        reply = client.get_parameters(
            Names=names[start : start + _GET_PARAMETERS_LIMIT], WithDecryption=True
        )
        for parameter in reply.get("Parameters", []):
            values[str(parameter["Name"])] = str(parameter["Value"])
    return {name: values[name] for name in names if name in values}


_GET_PARAMETERS_LIMIT = 10

__all__ = ["ParameterStoreSecretStore", "ParameterStoreSettings"]
