"""The ``moto`` conformance backend: AWS services emulated by moto's server.

``MECHAKIT_TEST_AWS_ENDPOINT`` (``http://host:port``) names a running emulator (moto or
LocalStack) to use; otherwise ``python -m moto.server`` is started on a free loopback
port (``pip install 'moto[server]'``); otherwise a ``motoserver/moto`` container via
testcontainers. Never point the variable at real AWS: the backend creates resources.

A driver is configured against resources that exist, and a matrix cannot create them, so
the backend seeds the fixed :data:`CONFORMANCE` set (idempotently, also on a server from
the environment): the DynamoDB table, the S3 bucket, the Secrets Manager secrets and the
SSM parameters that ``tests/conformance/matrix/aws.yaml`` names. Their values are in the
matrix's ``secrets`` options too, which must match :data:`CONFORMANCE`.

Placeholders: ``{backend.endpoint}``, ``{backend.region}``, ``{backend.accessKey}``,
``{backend.secretKey}``, ``{backend.table}``, ``{backend.ttlAttribute}``,
``{backend.bucket}`` and ``{backend.parameterPrefix}``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .backends import (
    Backend,
    BackendInfo,
    BackendUnavailable,
    LocalProcess,
    free_port,
)
from .containers import started, testcontainers

MOTO_IMAGE = "motoserver/moto:latest"
REGION = "us-east-1"
ACCESS_KEY = "mechakit-test"
SECRET_KEY = "mechakit-test"


@dataclass(frozen=True)
class ConformanceResources:
    """What the backend makes before any test runs."""

    table: str = "mechakit-conformance-state"
    partition_key: str = "key"
    ttl_attribute: str = "expiresAt"
    bucket: str = "mechakit-conformance-bucket"
    secrets: Mapping[str, str] = field(
        default_factory=lambda: {
            "mechakit-conformance-db-password": "s3cr3t!",
            "mechakit-conformance-api-token": '{"token": "abc", "scope": "read"}',
        }
    )
    parameter_prefix: str = "/mechakit/conformance/"
    parameters: Mapping[str, str] = field(
        default_factory=lambda: {"db-password": "p@ss w0rd", "feature-flags": "a,b,c"}
    )
    """Names under ``parameter_prefix``; all are stored as ``SecureString``."""


CONFORMANCE = ConformanceResources()


class MotoBackend(Backend):
    name = "moto"
    env_var = "MECHAKIT_TEST_AWS_ENDPOINT"

    def parse_address(self, value: str) -> dict[str, str]:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendUnavailable(f"{self.env_var}={value!r} is not an http://host:port URL")
        return _values(value.rstrip("/"))

    def from_environment(self, environ: Mapping[str, str]) -> BackendInfo | None:
        info = super().from_environment(environ)
        if info is not None:
            seed(info.values)
        return info

    def start_local(self, workdir: Path) -> BackendInfo:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise BackendUnavailable(
                f"moto's server is not installed: pip install 'moto[server]', or set {self.env_var}"
            )
        port = free_port()
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        process = LocalProcess(argv, port, workdir, "moto")
        process.start()
        values = _values(f"http://127.0.0.1:{port}")
        try:
            seed(values)
        except BackendUnavailable:
            process.discard()
            raise
        return process.backend_info(values)

    def start_container(self) -> BackendInfo:
        container = testcontainers("core.container", "DockerContainer")(MOTO_IMAGE)
        wait_for_logs = testcontainers("core.waiting_utils", "wait_for_logs")
        host, port = started(
            container.with_exposed_ports(5000),
            MOTO_IMAGE,
            lambda *_: wait_for_logs(container, "Running on", timeout=60),
            port=5000,
        )
        values = _values(f"http://{host}:{port}")
        seed(values)
        return BackendInfo(values, source="testcontainers", stop=container.stop)


def boto3_client(values: Mapping[str, str], service: str) -> Any:
    """A plain boto3 client of the provisioned server, for seeding and for tests' setup."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=values["endpoint"],
        region_name=values["region"],
        aws_access_key_id=values["accessKey"],
        aws_secret_access_key=values["secretKey"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def seed(values: Mapping[str, str], resources: ConformanceResources = CONFORMANCE) -> None:
    """Create the conformance resources where missing; existing ones are left as they are."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise BackendUnavailable("boto3 is not installed: pip install 'mechakit[aws]'") from None
    try:
        create_table(values, resources.table, resources.partition_key, resources.ttl_attribute)
        s3 = boto3_client(values, "s3")
        if resources.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=resources.bucket)
        secrets = boto3_client(values, "secretsmanager")
        for name, value in resources.secrets.items():
            try:
                secrets.create_secret(Name=name, SecretString=value)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ResourceExistsException":
                    raise
        ssm = boto3_client(values, "ssm")
        for name, value in resources.parameters.items():
            ssm.put_parameter(
                Name=resources.parameter_prefix + name,
                Value=value,
                Type="SecureString",
                Overwrite=True,
            )
    except (BotoCoreError, ClientError) as exc:
        raise BackendUnavailable(
            f"cannot seed the conformance resources at {values['endpoint']}: {exc}"
        ) from None


def create_table(
    values: Mapping[str, str], table: str, partition_key: str = "key", ttl_attribute: str = ""
) -> None:
    """A pay-per-request DynamoDB table keyed by the string ``partition_key``, if missing."""
    from botocore.exceptions import ClientError

    dynamodb = boto3_client(values, "dynamodb")
    try:
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": partition_key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": partition_key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
        return
    dynamodb.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    if ttl_attribute:
        dynamodb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute},
        )


def _values(endpoint: str) -> dict[str, str]:
    return {
        "endpoint": endpoint,
        "region": REGION,
        "accessKey": ACCESS_KEY,
        "secretKey": SECRET_KEY,
        "table": CONFORMANCE.table,
        "ttlAttribute": CONFORMANCE.ttl_attribute,
        "bucket": CONFORMANCE.bucket,
        "parameterPrefix": CONFORMANCE.parameter_prefix,
    }
