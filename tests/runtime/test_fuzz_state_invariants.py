"""Fuzzed state saves over the HTTP API: a 400 changed nothing; a 2xx reads back exactly.

Bounded (150 examples per store) so that it runs in CI.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STATE = "/v1.0/state/store"
KEYS = ["k0", "k1", "k2"]
INFINITE = "__INFINITE__"  # replaced by the JSON number 1e400 (a float overflow)
SURROGATE = "__SURROGATE__"  # replaced by the JSON string "\ud800" (a lone surrogate)


@pytest.fixture(params=["state.sqlite", "state.in-memory"])
def fuzz_client(
    request: pytest.FixtureRequest,
    resources: Callable[..., Path],
    component: Callable[..., str],
    private_runtime: Callable[[Path], Any],
    tmp_path: Path,
) -> Iterator[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]]:
    """One runtime on a private loop, so hypothesis (synchronous) can drive many requests."""
    metadata = (
        [("connectionString", str(tmp_path / "s.db"))] if request.param == "state.sqlite" else []
    )
    folder = resources(store=component("store", request.param, *metadata))
    with private_runtime(folder) as (loop, _, client):
        yield loop, client


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.just(INFINITE),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
ttls = st.sampled_from(
    ["", "10", "-1", "0", "-5", "x", "1.5", "2147483647", "2147483648", str(2**62), str(10**20)]
)
items = st.fixed_dictionaries(
    {"key": st.sampled_from([*KEYS, SURROGATE, "", "a||b"]), "value": values},
    optional={
        "metadata": ttls.map(lambda t: {"ttlInSeconds": t} if t else {}),
        "etag": st.sampled_from(["1", "2", "x", "", "-1"]),
    },
)


def body_text(batch: list[dict[str, Any]]) -> bytes:
    text = json.dumps(batch)
    return text.replace(f'"{INFINITE}"', "1e400").replace(f'"{SURROGATE}"', '"\\ud800"').encode()


async def snapshot(client: httpx.AsyncClient) -> list[Any]:
    answer = await client.post(f"{STATE}/bulk", json={"keys": KEYS})
    assert answer.status_code == 200, answer.text
    return [(i["key"], i.get("data"), i.get("etag")) for i in answer.json()]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(items, min_size=1, max_size=3))
def test_a_refused_save_changes_nothing_and_an_accepted_one_reads_back_exactly(
    fuzz_client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient], batch: list[dict[str, Any]]
) -> None:
    loop, client = fuzz_client

    async def check() -> None:
        before = await snapshot(client)
        answer = await client.post(
            STATE, content=body_text(batch), headers={"content-type": "application/json"}
        )
        assert answer.status_code < 500, (batch, answer.text)
        if answer.status_code >= 400:
            # An invalid item (400) refuses the whole save. A conflict (409) fails only its
            # own item, as a multi-item save is not a transaction (Dapr's BulkSet), so there
            # only a one-item save must leave everything as it was.
            if answer.status_code == 400 or len(batch) == 1:
                assert await snapshot(client) == before, (batch, answer.text)
            return
        expected = {item["key"]: item["value"] for item in batch}
        for key, value in expected.items():
            read = await client.get(f"{STATE}/{key}")
            assert read.status_code == 200, (batch, read.text)
            assert read.json() == value, batch

    loop.run_until_complete(check())
