"""bindings.localstorage: file operations under a root that no name can escape."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mechakit.components.bindings.localstorage import LocalStorageBinding
from mechakit.core.bindings import InvokeRequest, InvokeResponse
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    InvalidRequestError,
    MetadataError,
    NotFoundError,
    NotSupportedError,
)


async def started(root: Path | str) -> LocalStorageBinding:
    binding = LocalStorageBinding()
    await binding.init(ComponentMetadata("files", "bindings.localstorage", {"rootPath": str(root)}))
    return binding


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("outside data")
    return folder


@pytest_asyncio.fixture
async def binding(root: Path) -> AsyncIterator[LocalStorageBinding]:
    started_binding = await started(root)
    yield started_binding
    await started_binding.close()


async def invoke(
    binding: LocalStorageBinding, operation: str, data: bytes = b"", **metadata: str
) -> InvokeResponse:
    return await binding.invoke(InvokeRequest(operation, data, metadata))


async def test_root_folder_is_created_when_missing(root: Path) -> None:
    await started(root / "deeper")
    assert (root / "deeper").is_dir()


async def test_root_path_that_is_a_file_fails_init(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(MetadataError, match="is a file") as caught:
        await started(tmp_path / "file")
    assert caught.value.field == "rootPath"


async def test_root_path_setting_is_required() -> None:
    with pytest.raises(MetadataError, match="'rootPath' is required"):
        await LocalStorageBinding().init(ComponentMetadata("files", "bindings.localstorage"))


async def test_system_folders_are_refused_as_root() -> None:
    with pytest.raises(MetadataError, match="never allowed"):
        await started("/proc/self")


async def test_create_then_get_returns_the_bytes(binding: LocalStorageBinding, root: Path) -> None:
    data = b"\x00binary\xffdata"
    created = await invoke(binding, "create", data, fileName="notes/today.bin")
    assert created.metadata["fileName"] == "notes/today.bin"
    assert json.loads(created.data) == {"fileName": "notes/today.bin"}
    assert (root / "notes" / "today.bin").read_bytes() == data
    assert (await invoke(binding, "get", fileName="notes/today.bin")).data == data


async def test_create_without_a_name_makes_a_uuid_name(binding: LocalStorageBinding) -> None:
    created = await invoke(binding, "create", b"hello")
    name = created.metadata["fileName"]
    assert str(uuid.UUID(name)) == name
    assert (await invoke(binding, "get", fileName=name)).data == b"hello"


async def test_create_overwrites_an_existing_file(binding: LocalStorageBinding) -> None:
    await invoke(binding, "create", b"first version", fileName="f")
    await invoke(binding, "create", b"second", fileName="f")
    assert (await invoke(binding, "get", fileName="f")).data == b"second"


async def test_decode_base64_stores_the_decoded_bytes(binding: LocalStorageBinding) -> None:
    await invoke(
        binding, "create", base64.b64encode(b"\x01\x02"), fileName="b", decodeBase64="true"
    )
    assert (await invoke(binding, "get", fileName="b")).data == b"\x01\x02"


async def test_data_that_looks_like_base64_is_stored_as_is_by_default(
    binding: LocalStorageBinding,
) -> None:
    await invoke(binding, "create", b"abcd", fileName="plain")
    assert (await invoke(binding, "get", fileName="plain")).data == b"abcd"


async def test_invalid_base64_is_an_invalid_request(binding: LocalStorageBinding) -> None:
    with pytest.raises(InvalidRequestError, match="not valid base64"):
        await invoke(binding, "create", b"not base64!", fileName="b", decodeBase64="true")


async def test_encode_base64_returns_the_file_encoded(binding: LocalStorageBinding) -> None:
    await invoke(binding, "create", b"\xff\x00", fileName="b")
    got = await invoke(binding, "get", fileName="b", encodeBase64="true")
    assert got.data == base64.b64encode(b"\xff\x00")


async def test_unknown_flag_word_is_an_invalid_request(binding: LocalStorageBinding) -> None:
    with pytest.raises(InvalidRequestError, match="decodeBase64"):
        await invoke(binding, "create", b"x", fileName="b", decodeBase64="perhaps")


async def test_get_and_delete_of_a_missing_file_raise_not_found(
    binding: LocalStorageBinding,
) -> None:
    for operation in ("get", "delete"):
        with pytest.raises(NotFoundError, match="'absent.txt'"):
            await invoke(binding, operation, fileName="absent.txt")


async def test_delete_removes_the_file(binding: LocalStorageBinding, root: Path) -> None:
    await invoke(binding, "create", b"x", fileName="gone")
    await invoke(binding, "delete", fileName="gone")
    assert not (root / "gone").exists()
    with pytest.raises(NotFoundError):
        await invoke(binding, "get", fileName="gone")


async def test_get_and_delete_need_a_file_name(binding: LocalStorageBinding) -> None:
    for operation in ("get", "delete"):
        with pytest.raises(InvalidRequestError, match="needs metadata 'fileName'"):
            await invoke(binding, operation)


async def test_a_folder_is_not_a_file(binding: LocalStorageBinding) -> None:
    await invoke(binding, "create", b"x", fileName="dir/file")
    for operation in ("get", "delete"):
        with pytest.raises(InvalidRequestError, match="is a folder"):
            await invoke(binding, operation, fileName="dir")
    with pytest.raises(InvalidRequestError, match="is a folder"):
        await invoke(binding, "create", b"x", fileName="dir")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escaped.txt", "contains '..'"),
        ("a/../../escaped.txt", "contains '..'"),
        ("a/../b.txt", "contains '..'"),
        ("/etc/passwd", "absolute path"),
        (".", "rootPath itself"),
        ("bad\x00name", "NUL"),
    ],
)
@pytest.mark.parametrize("operation", ["create", "get", "delete", "list"])
async def test_names_that_would_leave_the_root_are_refused(
    binding: LocalStorageBinding, tmp_path: Path, operation: str, name: str, why: str
) -> None:
    data = b"x" if operation == "create" else b""
    if operation == "list" and name == ".":
        assert json.loads((await invoke(binding, operation, fileName=name)).data) == []
        return
    with pytest.raises(InvalidRequestError, match=why) as caught:
        await invoke(binding, operation, data, fileName=name)
    assert caught.value.field == "fileName" and caught.value.key == name
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("operation", ["create", "get", "delete"])
async def test_symlinks_pointing_outside_the_root_are_refused(
    binding: LocalStorageBinding, root: Path, outside: Path, operation: str
) -> None:
    (root / "link.txt").symlink_to(outside / "secret.txt")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    for name in ("link.txt", "linkdir/secret.txt", "linkdir/new.txt"):
        with pytest.raises(InvalidRequestError, match="outside rootPath") as caught:
            await invoke(binding, operation, b"overwritten", fileName=name)
        assert caught.value.field == "fileName"
    assert (outside / "secret.txt").read_text() == "outside data"
    assert not (outside / "new.txt").exists()


async def test_symlinks_inside_the_root_are_followed(
    binding: LocalStorageBinding, root: Path
) -> None:
    await invoke(binding, "create", b"real", fileName="real.txt")
    (root / "alias.txt").symlink_to(root / "real.txt")
    assert (await invoke(binding, "get", fileName="alias.txt")).data == b"real"


async def test_list_returns_sorted_relative_names_of_every_file(
    binding: LocalStorageBinding,
) -> None:
    for name in ("b.txt", "a/2.txt", "a/1.txt"):
        await invoke(binding, "create", b"x", fileName=name)
    listed = await invoke(binding, "list")
    assert json.loads(listed.data) == ["a/1.txt", "a/2.txt", "b.txt"]


async def test_list_of_an_empty_root_is_an_empty_array(binding: LocalStorageBinding) -> None:
    assert json.loads((await invoke(binding, "list")).data) == []


async def test_list_takes_prefix_and_max_results_from_metadata_or_data(
    binding: LocalStorageBinding,
) -> None:
    for name in ("logs/1", "logs/2", "logs/3", "other"):
        await invoke(binding, "create", b"x", fileName=name)
    by_metadata = await invoke(binding, "list", prefix="logs/", maxResults="2")
    assert json.loads(by_metadata.data) == ["logs/1", "logs/2"]
    by_data = await invoke(
        binding, "list", json.dumps({"prefix": "logs/", "maxResults": 1}).encode()
    )
    assert json.loads(by_data.data) == ["logs/1"]


async def test_list_of_a_sub_folder_named_by_file_name(binding: LocalStorageBinding) -> None:
    for name in ("logs/1", "other"):
        await invoke(binding, "create", b"x", fileName=name)
    assert json.loads((await invoke(binding, "list", fileName="logs")).data) == ["logs/1"]
    with pytest.raises(NotFoundError):
        await invoke(binding, "list", fileName="absent")


async def test_list_leaves_out_symlinks_pointing_outside(
    binding: LocalStorageBinding, root: Path, outside: Path
) -> None:
    await invoke(binding, "create", b"x", fileName="inside")
    (root / "link.txt").symlink_to(outside / "secret.txt")
    assert json.loads((await invoke(binding, "list")).data) == ["inside"]


@pytest.mark.parametrize("max_results", ["0", "-1", "two", "1.5"])
async def test_list_rejects_a_bad_max_results(
    binding: LocalStorageBinding, max_results: str
) -> None:
    with pytest.raises(InvalidRequestError, match="maxResults"):
        await invoke(binding, "list", maxResults=max_results)


async def test_list_rejects_data_that_is_not_a_json_object(binding: LocalStorageBinding) -> None:
    with pytest.raises(InvalidRequestError, match="JSON object"):
        await invoke(binding, "list", b"[1, 2]")


async def test_unknown_operation_is_not_supported(binding: LocalStorageBinding) -> None:
    with pytest.raises(NotSupportedError, match="create, get, delete, list"):
        await invoke(binding, "rename", fileName="x")


async def test_operation_names_are_case_insensitive(binding: LocalStorageBinding) -> None:
    await invoke(binding, "CREATE", b"x", fileName="f")
    assert (await invoke(binding, "Get", fileName="f")).data == b"x"
