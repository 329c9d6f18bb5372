"""secretstores.hashicorp.vault: secrets from a Vault (or OpenBao) KV secrets engine.

A secret ``name`` is read at ``<enginePath>/<vaultKVPrefix>/<name>`` (without the prefix
when ``vaultKVUsePrefix`` is false). KV version 2 is the default (``vaultKVVersion: 2``;
request metadata ``version_id`` reads an older version); ``vaultKVVersion: 1`` reads a
KV v1 mount. With ``vaultValueType: map`` (default) a secret is all its keys, values that
are not text given as JSON; with ``text`` it is one key, the secret's name, holding the
secret's whole data as JSON text (keys sorted), as upstream. Bulk get lists the prefix
recursively (nested names come back as ``folder/name``) and reads every secret.

The token is ``vaultToken`` or the file ``vaultTokenMountPath`` (read at init); it is
checked at init with a token self-lookup, so a wrong one fails early naming the field.
TLS: ``caPem`` (inline) over ``caPath`` (a folder of PEM files) over ``caCert`` (a file),
``skipVerify``, ``tlsServerName``. hvac is imported in ``init`` and every call runs in a
worker thread, as hvac blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, field_validator

from mechakit.components._shared.requests import secret_name
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MechakitError,
    MetadataError,
    MissingDependencyError,
    SecretNotFoundError,
)
from mechakit.core.metadata import Bool, Sensitive, Settings, setting
from mechakit.core.secretstores import (
    BulkGetSecretRequest,
    GetSecretRequest,
    SecretStore,
    SecretStoreFeature,
)

T = TypeVar("T")
VERSION_ID = "version_id"


class ValueType(enum.StrEnum):
    MAP = "map"
    TEXT = "text"


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _kv_version(value: object) -> object:
    return value.strip().lower().removeprefix("v") if isinstance(value, str) else value


class VaultSettings(Settings):
    vault_addr: str = setting(
        "https://127.0.0.1:8200",
        description="Address of the Vault server.",
        example="https://vault.example.com:8200",
    )
    vault_token: Sensitive = setting(
        Sensitive(""),
        description="Token to authenticate with; this or vaultTokenMountPath.",
    )
    vault_token_mount_path: str = setting(
        "",
        description="File holding the token; this or vaultToken.",
        example="/var/run/secrets/vault/token",
    )
    engine_path: str = setting("secret", description="Mount path of the KV engine.", example="kv")
    vault_kv_prefix: str = setting(
        "dapr",
        name="vaultKVPrefix",
        description="Folder within the engine holding the secrets.",
        example="myapp",
    )
    vault_kv_use_prefix: Bool = setting(
        True,
        name="vaultKVUsePrefix",
        description="Whether secrets live under vaultKVPrefix; false reads the engine's root.",
    )
    vault_value_type: Annotated[ValueType, BeforeValidator(_lower)] = setting(
        ValueType.MAP,
        description="'map': a secret is all its keys; 'text': one key holding the data as JSON.",
        example="map",
    )
    vault_kv_version: Annotated[int, BeforeValidator(_kv_version)] = setting(
        2, name="vaultKVVersion", description="KV engine version: 2 or 1.", example="2"
    )
    ca_cert: str = setting("", description="CA certificate file (PEM) to verify the server.")
    ca_path: str = setting("", description="Folder of CA certificate files (PEM); over caCert.")
    ca_pem: str = setting(
        "", description="CA certificate as inline PEM text; over caPath and caCert."
    )
    skip_verify: Bool = setting(False, description="Accept any server certificate (testing only).")
    tls_server_name: str = setting("", description="Server name expected in the certificate.")

    @field_validator("vault_kv_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in (1, 2):
            raise ValueError("must be 1 or 2")
        return value

    @property
    def prefix(self) -> str:
        return self.vault_kv_prefix.strip("/") if self.vault_kv_use_prefix else ""


class VaultSecretStore(SecretStore[VaultSettings]):
    """Secrets from a KV engine of HashiCorp Vault or OpenBao."""

    FEATURES = frozenset({SecretStoreFeature.MULTIPLE_KEY_VALUES_PER_SECRET})

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None
        self._token_field = "vaultToken"
        self._bundle: Path | None = None
        self._text_values = False

    def features(self) -> frozenset[SecretStoreFeature]:
        if self._text_values:
            return frozenset()
        return super().features()

    async def open(self) -> None:
        settings = self.settings
        self._text_values = settings.vault_value_type is ValueType.TEXT
        try:
            import hvac
        except ImportError:
            raise MissingDependencyError(
                "needs hvac: pip install 'mechakit[vault]'", component=self.label
            ) from None
        token = await self._token(settings)
        verify = await asyncio.to_thread(self._verify, settings)
        session = _session(verify, settings.tls_server_name)
        self._client = hvac.Client(
            url=settings.vault_addr, token=token, verify=verify, session=session
        )
        await self._call(lambda: self._client.auth.token.lookup_self(), "check the token")

    async def shut(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.adapter.close)
        bundle, self._bundle = self._bundle, None
        if bundle is not None:
            with contextlib.suppress(OSError):
                bundle.unlink()

    async def ping(self) -> None:
        await self._call(lambda: self._client.sys.read_health_status(method="GET"), "ping")

    async def get_secret(self, request: GetSecretRequest) -> dict[str, str]:
        name = secret_name(request, component=self.label)
        version = self._version(request.metadata)
        data = await self._read(name, version)
        if data is None:
            raise SecretNotFoundError(
                f"secret {request.name!r} not found" + (f" (version {version})" if version else ""),
                component=self.label,
                key=request.name,
            )
        return data

    async def bulk_get_secret(self, request: BulkGetSecretRequest) -> dict[str, dict[str, str]]:
        """Every secret under the prefix; one deleted while listing is left out."""
        version = self._version(request.metadata)
        names = await self._list("")
        found: dict[str, dict[str, str]] = {}
        for name in names:
            data = await self._read(name, version)
            if data is not None:
                found[name] = data
        return found

    # --- reading ------------------------------------------------------------------------

    async def _read(self, name: str, version: int | None) -> dict[str, str] | None:
        settings = self.settings
        path = self._path(name)
        kv = self._kv
        if settings.vault_kv_version == 2:
            response = await self._call(
                lambda: kv.v2.read_secret_version(
                    path,
                    version=version,
                    mount_point=settings.engine_path,
                    raise_on_deleted_version=True,
                ),
                "read secret",
                name,
                missing_ok=True,
            )
            data = None if response is None else response["data"]["data"]
        else:
            response = await self._call(
                lambda: kv.v1.read_secret(path, mount_point=settings.engine_path),
                "read secret",
                name,
                missing_ok=True,
            )
            data = None if response is None else response["data"]
        if data is None:
            return None
        if settings.vault_value_type is ValueType.TEXT:
            return {
                name: json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
            }
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}

    async def _list(self, folder: str) -> list[str]:
        """Secret names under ``folder`` (relative to the prefix), recursively."""
        settings = self.settings
        path = self._path(folder) if folder else settings.prefix
        kv = self._kv.v2 if settings.vault_kv_version == 2 else self._kv.v1
        response = await self._call(
            lambda: kv.list_secrets(path, mount_point=settings.engine_path),
            "list secrets",
            missing_ok=True,
        )
        names: list[str] = []
        for key in [] if response is None else response["data"]["keys"]:
            if key.endswith("/"):
                names += await self._list(folder + key)
            else:
                names.append(folder + key)
        return names

    @property
    def _kv(self) -> Any:
        return self.opened(self._client).secrets.kv

    def _path(self, name: str) -> str:
        prefix = self.settings.prefix
        return f"{prefix}/{name}" if prefix else name

    def _version(self, metadata: Any) -> int | None:
        raw = str(metadata.get(VERSION_ID, "") or "").strip()
        if not raw or raw == "0":
            return None
        if self.settings.vault_kv_version == 1:
            raise InvalidRequestError(
                f"request metadata {VERSION_ID!r} needs KV version 2 (vaultKVVersion is 1)",
                component=self.label,
                field=VERSION_ID,
            )
        if not raw.isdigit():
            raise InvalidRequestError(
                f"request metadata {VERSION_ID!r} must be a version number, not {raw!r}",
                component=self.label,
                field=VERSION_ID,
            )
        return int(raw)

    # --- connecting ---------------------------------------------------------------------

    async def _token(self, settings: VaultSettings) -> str:
        token = settings.vault_token.get_secret_value().strip()
        path = settings.vault_token_mount_path
        if token and path:
            raise MetadataError(
                "metadata 'vaultToken' and 'vaultTokenMountPath' are both set; give one",
                component=self.label,
                field="vaultToken",
            )
        if token:
            return token
        if not path:
            raise MetadataError(
                "metadata 'vaultToken' (or 'vaultTokenMountPath', a file holding the token) "
                "is required",
                component=self.label,
                field="vaultToken",
            )
        self._token_field = "vaultTokenMountPath"
        try:
            text = await asyncio.to_thread(Path(path).read_text)
        except (OSError, UnicodeDecodeError) as exc:
            raise MetadataError(
                f"metadata 'vaultTokenMountPath': cannot read the token file {path!r}: {exc}",
                component=self.label,
                field="vaultTokenMountPath",
            ) from None
        if not text.strip():
            raise MetadataError(
                f"metadata 'vaultTokenMountPath': the token file {path!r} is empty",
                component=self.label,
                field="vaultTokenMountPath",
            )
        return text.strip()

    def _verify(self, settings: VaultSettings) -> bool | str:
        """What requests verifies the server with: a CA bundle file, True, or False."""
        if settings.skip_verify:
            self.log.warning("%s: skipVerify is set; the server is not verified", self.label)
            return False
        field, pem = "", ""
        try:
            if settings.ca_pem.strip():
                field, pem = "caPem", settings.ca_pem
            elif settings.ca_path:
                field = "caPath"
                files = sorted(p for p in Path(settings.ca_path).rglob("*") if p.is_file())
                pem = "\n".join(p.read_text() for p in files)
            elif settings.ca_cert:
                field = "caCert"
                pem = Path(settings.ca_cert).read_text()
            else:
                return True
        except (OSError, UnicodeDecodeError) as exc:
            raise MetadataError(
                f"metadata {field!r}: cannot read the CA certificate: {exc}",
                component=self.label,
                field=field,
            ) from None
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise MetadataError(
                f"metadata {field!r} holds no PEM certificate", component=self.label, field=field
            )
        descriptor, name = tempfile.mkstemp(prefix="mechakit-vault-ca-", suffix=".pem")
        with os.fdopen(descriptor, "w") as bundle:
            bundle.write(pem)
        self._bundle = Path(name)
        return name

    async def _call(
        self,
        call: Callable[[], T],
        what: str,
        name: str | None = None,
        *,
        missing_ok: bool = False,
    ) -> T | None:
        """``call`` in a worker thread; hvac and requests errors become core errors.

        ``missing_ok``: a 404 answers None instead of raising.
        """
        import hvac.exceptions as vault
        import requests

        self.opened(self._client)
        try:
            return await asyncio.to_thread(call)
        except MechakitError:
            raise
        except vault.InvalidPath:
            if missing_ok:
                return None
            raise SecretNotFoundError(
                f"{what}: {name!r} not found", component=self.label, key=name
            ) from None
        except (vault.Forbidden, vault.Unauthorized) as exc:
            raise MetadataError(
                f"{what} was refused: the token in metadata {self._token_field!r} is invalid, "
                f"expired or lacks permission ({_reason(exc)})",
                component=self.label,
                field=self._token_field,
                key=name,
            ) from None
        except (vault.VaultDown, vault.BadGateway, vault.RateLimitExceeded) as exc:
            raise ConnectionFailedError(
                f"{what}: Vault is unavailable ({_reason(exc)})", component=self.label, key=name
            ) from None
        except requests.exceptions.SSLError as exc:
            raise MetadataError(
                f"{what}: TLS with {self.settings.vault_addr} failed ({exc}); check "
                "caCert/caPath/caPem or tlsServerName",
                component=self.label,
                field="vaultAddr",
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise ConnectionFailedError(
                f"{what}: cannot reach Vault at {self.settings.vault_addr} ({type(exc).__name__})",
                component=self.label,
                field="vaultAddr",
                key=name,
            ) from None
        except (vault.VaultError, requests.exceptions.RequestException) as exc:
            raise ComponentError(
                f"{what} failed: {_reason(exc)}", component=self.label, key=name
            ) from None


def _session(verify: bool | str, server_name: str) -> Any:
    """A requests session verifying with ``verify``, against ``server_name`` if given.

    hvac takes a given session's ``verify`` over its own argument, so it is set here.
    """
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    session.verify = verify
    if server_name:

        class _ServerName(HTTPAdapter):
            def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                kwargs["server_hostname"] = server_name
                kwargs["assert_hostname"] = server_name
                super().init_poolmanager(*args, **kwargs)

        session.mount("https://", _ServerName())
    return session


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["ValueType", "VaultSecretStore", "VaultSettings"]
