"""bindings.localstorage: names the file system refuses are the request's fault, not the binding's.

A name that uses a file as a folder (ENOTDIR) or is too long (ENAMETOOLONG) must be an
InvalidRequestError naming ``fileName``, and a refused create must leave nothing behind.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mechakit.components.bindings.localstorage import LocalStorageBinding
from mechakit.core.bindings import InvokeRequest, InvokeResponse
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import InvalidRequestError

OPERATIONS = ("create", "get", "delete", "list")
LONG_PART = "x" * 300


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    (folder / "a.txt").write_text("original")
    return folder


@pytest_asyncio.fixture
async def binding(root: Path) -> AsyncIterator[LocalStorageBinding]:
    started = LocalStorageBinding()
    await started.init(ComponentMetadata("files", "bindings.localstorage", {"rootPath": str(root)}))
    yield started
    await started.close()


async def invoke(binding: LocalStorageBinding, operation: str, name: str) -> InvokeResponse:
    data = b"" if operation == "list" else b"new data"
    return await binding.invoke(InvokeRequest(operation, data, {"fileName": name}))


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text() if p.is_file() else "<folder>"
        for p in root.rglob("*")
    }


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("name", ["a.txt/b", "a.txt/b/c.txt"])
async def test_a_file_used_as_a_folder_is_an_invalid_request_naming_the_file(
    binding: LocalStorageBinding, root: Path, operation: str, name: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await invoke(binding, operation, name)
    error = caught.value
    assert error.field == "fileName" and error.key == name
    assert str(error) == (
        f"bindings.localstorage 'files': fileName {name!r} uses the file 'a.txt' as a folder"
    )
    assert tree(root) == {"a.txt": "original"}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (LONG_PART, "the part 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (300 characters) is 300 bytes"),
        (f"new/{LONG_PART}", "is 300 bytes, the file system allows 255 per name"),
        ("/".join(["d" * 200] * 25), "the full path would be"),
    ],
)
async def test_a_name_too_long_for_the_file_system_is_an_invalid_request(
    binding: LocalStorageBinding, root: Path, operation: str, name: str, problem: str
) -> None:
    with pytest.raises(InvalidRequestError, match="is too long") as caught:
        await invoke(binding, operation, name)
    error = caught.value
    assert error.field == "fileName" and error.key == name
    message = str(error)
    assert message.startswith("bindings.localstorage 'files': fileName ")
    assert problem in message
    assert len(message) < 250, "a 300-character name is shortened in the message"
    assert tree(root) == {"a.txt": "original"}, "not even the folder 'new' is made"


async def test_a_name_just_within_the_limit_is_written_and_read(
    binding: LocalStorageBinding, root: Path
) -> None:
    name = "y" * 255
    created = await invoke(binding, "create", name)
    assert json.loads(created.data) == {"fileName": name}
    assert (await invoke(binding, "get", name)).data == b"new data"
    assert json.loads((await invoke(binding, "list", "")).data) == ["a.txt", name]
    await invoke(binding, "delete", name)
    assert tree(root) == {"a.txt": "original"}


async def test_listing_a_file_still_says_it_is_not_a_folder(binding: LocalStorageBinding) -> None:
    with pytest.raises(InvalidRequestError, match="'a.txt' is a file, not a folder to list"):
        await invoke(binding, "list", "a.txt")


@pytest.mark.parametrize("operation", ["create", "delete"])
async def test_a_folder_named_as_a_file_is_an_invalid_request(
    binding: LocalStorageBinding, root: Path, operation: str
) -> None:
    (root / "sub").mkdir()
    with pytest.raises(InvalidRequestError, match="fileName 'sub' is a folder"):
        await invoke(binding, operation, "sub")
    assert (root / "sub").is_dir() and list((root / "sub").iterdir()) == []
