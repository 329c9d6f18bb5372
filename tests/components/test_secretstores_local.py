"""secretstores.local.file and secretstores.local.env, beyond the conformance suite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mechakit.components.secretstores.local_env import LocalEnvSecretStore
from mechakit.components.secretstores.local_file import LocalFileSecretStore
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import InvalidRequestError, MetadataError, SecretNotFoundError
from mechakit.core.secretstores import BulkGetSecretRequest, GetSecretRequest, SecretStoreFeature

FileStoreFactory = Callable[..., Awaitable[LocalFileSecretStore]]


@pytest_asyncio.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[FileStoreFactory]:
    """Writes ``content`` (JSON text or a value to dump) and returns an initialised store."""
    made: list[LocalFileSecretStore] = []

    async def make(content: Any, **properties: str) -> LocalFileSecretStore:
        path = tmp_path / "secrets.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        store = LocalFileSecretStore()
        made.append(store)
        await store.init(
            ComponentMetadata(
                name="files",
                type="secretstores.local.file",
                properties={"secretsFile": str(path), **properties},
            )
        )
        return store

    yield make
    for store in made:
        await store.close()


async def secret(store: LocalFileSecretStore | LocalEnvSecretStore, name: str) -> dict[str, str]:
    return await store.get_secret(GetSecretRequest(name))


async def everything(
    store: LocalFileSecretStore | LocalEnvSecretStore,
) -> dict[str, dict[str, str]]:
    return await store.bulk_get_secret(BulkGetSecretRequest())


# secretstores.local.file


async def test_nested_objects_flatten_with_the_default_colon(file_store: FileStoreFactory) -> None:
    store = await file_store({"db": {"primary": {"password": "s3cret"}}, "top": "level"})
    assert await secret(store, "db:primary:password") == {"db:primary:password": "s3cret"}
    assert await everything(store) == {
        "db:primary:password": {"db:primary:password": "s3cret"},
        "top": {"top": "level"},
    }


async def test_nested_separator_setting_joins_the_names(file_store: FileStoreFactory) -> None:
    store = await file_store({"db": {"password": "s3cret"}}, nestedSeparator="__")
    assert await secret(store, "db__password") == {"db__password": "s3cret"}


async def test_array_items_are_named_by_their_index(file_store: FileStoreFactory) -> None:
    store = await file_store({"hosts": ["a", {"name": "b"}]})
    assert await secret(store, "hosts:0") == {"hosts:0": "a"}
    assert await secret(store, "hosts:1:name") == {"hosts:1:name": "b"}


async def test_non_string_values_read_as_json_writes_them(file_store: FileStoreFactory) -> None:
    store = await file_store(
        '{"yes": true, "no": false, "ratio": 1.50, "neg": -0.25, "nothing": null,'
        ' "big": 123456789012345678901234567890, "count": 7}'
    )
    values = {name: keys[name] for name, keys in (await everything(store)).items()}
    assert values == {
        "yes": "true",
        "no": "false",
        "ratio": "1.5",
        "neg": "-0.25",
        "nothing": "null",
        "big": "123456789012345678901234567890",
        "count": "7",
    }


async def test_a_nested_object_is_not_itself_a_secret(file_store: FileStoreFactory) -> None:
    store = await file_store({"db": {"password": "s3cret"}})
    with pytest.raises(SecretNotFoundError):
        await secret(store, "db")


async def test_multi_valued_secrets_are_top_level_keys_holding_their_children(
    file_store: FileStoreFactory,
) -> None:
    store = await file_store(
        {"db": {"user": "admin", "pool": {"size": 10}}, "apiKey": "abc"}, multiValued="true"
    )
    assert await secret(store, "db") == {"user": "admin", "pool:size": "10"}
    assert await secret(store, "apiKey") == {"apiKey": "abc"}
    assert store.features() == {SecretStoreFeature.MULTIPLE_KEY_VALUES_PER_SECRET}


async def test_single_valued_store_declares_no_features(file_store: FileStoreFactory) -> None:
    store = await file_store({"a": "b"})
    assert store.features() == frozenset()


async def test_names_that_flatten_alike_are_an_error_naming_both(
    file_store: FileStoreFactory,
) -> None:
    with pytest.raises(MetadataError) as caught:
        await file_store('{"a:b": 1, "a": {"b": 2}}')
    message = str(caught.value)
    assert '["a:b"]' in message and '["a"]["b"]' in message and caught.value.field == "secretsFile"


async def test_children_that_flatten_alike_in_a_multi_valued_secret_are_an_error(
    file_store: FileStoreFactory,
) -> None:
    with pytest.raises(MetadataError, match=r'\["db"\]\["x\.y"\] and \["db"\]\["x"\]\["y"\]'):
        await file_store(
            '{"db": {"x.y": 1, "x": {"y": 2}}}', multiValued="true", nestedSeparator="."
        )


async def test_a_key_repeated_in_one_object_is_an_error(file_store: FileStoreFactory) -> None:
    with pytest.raises(MetadataError, match="'password' appears twice"):
        await file_store('{"password": "one", "password": "two"}')


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"a": ', "is not valid JSON: Expecting value at line 1 column 7"),
        ('["a"]', "must hold a JSON object at the top, not an array"),
        ('{"a": NaN}', "NaN is not a JSON value"),
        ('{"a": 1e999}', "too large"),
    ],
)
async def test_unusable_file_content_fails_init_naming_file_and_problem(
    file_store: FileStoreFactory, tmp_path: Path, content: str, problem: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        await file_store(content)
    assert str(tmp_path / "secrets.json") in str(caught.value)
    assert problem in str(caught.value)


async def test_missing_file_fails_init_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(MetadataError, match="does not exist") as caught:
        await LocalFileSecretStore().init(
            ComponentMetadata("files", "secretstores.local.file", {"secretsFile": str(missing)})
        )
    assert str(missing) in str(caught.value) and caught.value.field == "secretsFile"


async def test_folder_as_secrets_file_fails_init(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="is a folder"):
        await LocalFileSecretStore().init(
            ComponentMetadata("files", "secretstores.local.file", {"secretsFile": str(tmp_path)})
        )


async def test_secrets_file_setting_is_required() -> None:
    with pytest.raises(MetadataError, match="'secretsFile' is required"):
        await LocalFileSecretStore().init(ComponentMetadata("files", "secretstores.local.file"))


async def test_missing_secret_raises_secret_not_found_naming_it(
    file_store: FileStoreFactory,
) -> None:
    store = await file_store({"a": "b"})
    with pytest.raises(SecretNotFoundError, match="'nope'") as caught:
        await secret(store, "nope")
    assert caught.value.key == "nope"


async def test_file_is_read_once_at_init(file_store: FileStoreFactory, tmp_path: Path) -> None:
    store = await file_store({"a": "before"})
    (tmp_path / "secrets.json").write_text(json.dumps({"a": "after"}))
    assert await secret(store, "a") == {"a": "before"}


async def test_returned_secrets_are_copies(file_store: FileStoreFactory) -> None:
    store = await file_store({"a": "b"})
    (await secret(store, "a"))["a"] = "changed"
    (await everything(store))["a"]["a"] = "changed"
    assert await secret(store, "a") == {"a": "b"}


# secretstores.local.env


async def env_store(**properties: str) -> LocalEnvSecretStore:
    store = LocalEnvSecretStore()
    await store.init(ComponentMetadata("env", "secretstores.local.env", properties))
    return store


async def test_prefix_limits_the_variables_and_is_removed_from_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MYAPP_DB_PASSWORD", "s3cret")
    monkeypatch.setenv("OTHER_DB_PASSWORD", "hidden")
    store = await env_store(prefix="MYAPP_")
    assert await secret(store, "DB_PASSWORD") == {"DB_PASSWORD": "s3cret"}
    assert await everything(store) == {"DB_PASSWORD": {"DB_PASSWORD": "s3cret"}}
    with pytest.raises(SecretNotFoundError):
        await secret(store, "OTHER_DB_PASSWORD")


async def test_without_prefix_every_variable_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MECHAKIT_TEST_VALUE", "42")
    store = await env_store()
    assert await secret(store, "MECHAKIT_TEST_VALUE") == {"MECHAKIT_TEST_VALUE": "42"}
    assert (await everything(store))["MECHAKIT_TEST_VALUE"] == {"MECHAKIT_TEST_VALUE": "42"}


async def test_dapr_variables_and_the_app_token_are_never_exposed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAPR_API_TOKEN", "t")
    monkeypatch.setenv("APP_API_TOKEN", "t")
    for store in (await env_store(), await env_store(prefix="DAPR_")):
        for name in ("DAPR_API_TOKEN", "APP_API_TOKEN", "API_TOKEN"):
            with pytest.raises(SecretNotFoundError):
                await secret(store, name)
        names = set(await everything(store))
        assert not names & {"DAPR_API_TOKEN", "APP_API_TOKEN", "API_TOKEN"}


async def test_variables_are_read_live(monkeypatch: pytest.MonkeyPatch) -> None:
    store = await env_store(prefix="MECHAKIT_LIVE_")
    monkeypatch.setenv("MECHAKIT_LIVE_X", "later")
    assert await secret(store, "X") == {"X": "later"}


async def test_missing_variable_raises_secret_not_found_naming_it() -> None:
    store = await env_store(prefix="MECHAKIT_ABSENT_")
    with pytest.raises(SecretNotFoundError, match="'NOPE'.*MECHAKIT_ABSENT_NOPE"):
        await secret(store, "NOPE")


async def test_empty_secret_name_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequestError):
        await secret(await env_store(), "")
