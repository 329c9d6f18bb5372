"""Bad state requests over the HTTP API are 400s that change nothing, on every embedded store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

import mechakit
from mechakit.runtime.http_api import create_app

WriteFiles = Callable[..., Path]
STATE = "/v1.0/state/store"


@pytest.fixture(params=["state.sqlite", "state.in-memory"])
async def http(
    request: pytest.FixtureRequest,
    resources: WriteFiles,
    component: Callable[..., str],
    tmp_path: Path,
) -> AsyncIterator[httpx.AsyncClient]:
    metadata = (
        [("connectionString", str(tmp_path / "s.db"))] if request.param == "state.sqlite" else []
    )
    folder = resources(store=component("store", request.param, *metadata))
    async with mechakit.open(folder, app_id="myapp") as runtime:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://dapr") as client:
            saved = await client.post(
                STATE, json=[{"key": "a", "value": "orig"}, {"key": "b", "value": 1}]
            )
            assert saved.status_code == 204
            yield client


async def assert_unchanged(http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{STATE}/a")).json() == "orig"
    assert (await http.get(f"{STATE}/b")).json() == 1
    bulk = await http.post(f"{STATE}/bulk", json={"keys": ["a", "b"]})
    assert bulk.status_code == 200
    assert [item["data"] for item in bulk.json()] == ["orig", 1]


@pytest.mark.parametrize("ttl", ["9223372036854775808", str(10**20), str(2**62), "2147483648", "0"])
async def test_a_ttl_out_of_dapr_bounds_is_400_and_writes_nothing(
    http: httpx.AsyncClient, ttl: str
) -> None:
    answer = await http.post(
        STATE, json=[{"key": "a", "value": "new", "metadata": {"ttlInSeconds": ttl}}]
    )
    assert answer.status_code == 400, answer.text
    assert "ttlInSeconds" in answer.text
    transaction = await http.post(
        f"{STATE}/transaction",
        json={
            "operations": [
                {"operation": "upsert", "request": {"key": "b", "value": 2}},
                {
                    "operation": "upsert",
                    "request": {"key": "a", "value": "new", "metadata": {"ttlInSeconds": ttl}},
                },
            ]
        },
    )
    assert transaction.status_code == 400, transaction.text
    await assert_unchanged(http)


async def test_the_largest_ttl_dapr_allows_is_accepted(http: httpx.AsyncClient) -> None:
    answer = await http.post(
        STATE, json=[{"key": "c", "value": 3, "metadata": {"ttlInSeconds": "2147483647"}}]
    )
    assert answer.status_code == 204, answer.text
    assert (await http.get(f"{STATE}/c")).json() == 3


async def test_a_number_json_cannot_hold_is_400_and_bulk_reads_keep_working(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.post(
        STATE,
        content=b'[{"key": "a", "value": 1e400}]',
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    await assert_unchanged(http)


async def test_a_key_with_a_lone_surrogate_is_400(http: httpx.AsyncClient) -> None:
    answer = await http.post(
        STATE,
        content=b'[{"key": "\\ud800", "value": 1}]',
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    assert "key" in answer.text
    bulk = await http.post(
        f"{STATE}/bulk",
        content=b'{"keys": ["a", "\\ud800"]}',
        headers={"content-type": "application/json"},
    )
    assert bulk.status_code == 400, bulk.text
    await assert_unchanged(http)
