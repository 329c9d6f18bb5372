"""The HTTP API answers 400, not 500, for a localstorage fileName the file system refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

import mechakit
from mechakit.runtime.http_api import create_app

WriteFiles = Callable[..., Path]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.txt").write_text("original")
    return folder


@pytest.fixture
async def http(
    resources: WriteFiles, component: Callable[..., str], root: Path
) -> AsyncIterator[httpx.AsyncClient]:
    folder = resources(files=component("files", "bindings.localstorage", ("rootPath", str(root))))
    async with mechakit.open(folder, app_id="myapp") as runtime:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://dapr") as client:
            yield client


@pytest.mark.parametrize("operation", ["create", "get", "delete", "list"])
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a.txt/b", "fileName 'a.txt/b' uses the file 'a.txt' as a folder"),
        ("x" * 300, "is too long: the part"),
        ("new/" + "x" * 300, "is 300 bytes, the file system allows 255 per name"),
    ],
)
async def test_a_refused_file_name_is_400_and_nothing_is_written(
    http: httpx.AsyncClient, root: Path, operation: str, name: str, problem: str
) -> None:
    body = {"operation": operation, "data": "new data", "metadata": {"fileName": name}}
    if operation == "list":
        del body["data"]
    answer = await http.post("/v1.0/bindings/files", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["errorCode"] == "ERR_INVOKE_OUTPUT_BINDING"
    assert "bindings.localstorage 'files': fileName " in error["message"]
    assert problem in error["message"]
    assert contents(root) == {"a.txt": "original"}


def contents(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text() if p.is_file() else "<folder>"
        for p in root.rglob("*")
    }
