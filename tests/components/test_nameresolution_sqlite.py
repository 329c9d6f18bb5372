"""nameresolution.sqlite: sidecars sharing one registry file find each other, and a
sidecar that stops renewing is no longer picked once its row expires."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from mechakit.components.nameresolution.sqlite import SQLiteNameResolver, default_file
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import MetadataError, NotFoundError
from mechakit.core.nameresolution import Registration, ResolveRequest
from mechakit.core.registry import Registry

Open = Callable[..., Coroutine[Any, Any, SQLiteNameResolver]]


@pytest.fixture
async def open_resolver(tmp_path: Path) -> AsyncIterator[Open]:
    made: list[SQLiteNameResolver] = []

    async def open_one(**properties: str) -> SQLiteNameResolver:
        resolver = SQLiteNameResolver()
        settings = {"connectionString": str(tmp_path / "nr.db"), **properties}
        await resolver.init(ComponentMetadata("nr", "nameresolution.sqlite", settings))
        made.append(resolver)
        return resolver

    yield open_one
    for resolver in made:
        await resolver.close()


async def test_a_registered_sidecar_is_found_by_another(open_resolver: Open) -> None:
    callee, caller = await open_resolver(), await open_resolver()
    await callee.register(Registration("svc-b", "127.0.0.1:50002"))
    assert await caller.resolve(ResolveRequest("svc-b")) == "127.0.0.1:50002"
    with pytest.raises(NotFoundError, match="'svc-b' in namespace 'prod'"):
        await caller.resolve(ResolveRequest("svc-b", namespace="prod"))
    with pytest.raises(NotFoundError, match="'svc-c'"):
        await caller.resolve(ResolveRequest("svc-c"))


async def test_resolve_spreads_over_the_live_instances(open_resolver: Open) -> None:
    first, second, caller = await open_resolver(), await open_resolver(), await open_resolver()
    await first.register(Registration("svc-b", "127.0.0.1:1"))
    await second.register(Registration("svc-b", "127.0.0.1:2"))
    picked = {await caller.resolve(ResolveRequest("svc-b")) for _ in range(60)}
    assert picked == {"127.0.0.1:1", "127.0.0.1:2"}


async def test_closing_withdraws_the_registration(open_resolver: Open) -> None:
    callee, caller = await open_resolver(), await open_resolver()
    await callee.register(Registration("svc-b", "127.0.0.1:50002"))
    await callee.close()
    with pytest.raises(NotFoundError):
        await caller.resolve(ResolveRequest("svc-b"))


async def test_renewal_keeps_a_row_alive_and_a_dead_sidecar_expires(open_resolver: Open) -> None:
    alive = await open_resolver(updateInterval="100ms")
    dead = await open_resolver(updateInterval="100ms")
    caller = await open_resolver(updateInterval="100ms")
    await alive.register(Registration("alive", "127.0.0.1:1"))
    await dead.register(Registration("dead", "127.0.0.1:2"))
    assert dead._renewing is not None
    dead._renewing.cancel()  # the process died: no renewal, no deregistration
    await asyncio.sleep(0.5)  # past three update intervals
    assert await caller.resolve(ResolveRequest("alive")) == "127.0.0.1:1"
    with pytest.raises(NotFoundError):
        await caller.resolve(ResolveRequest("dead"))


async def test_settings_are_checked_and_the_default_file_is_under_mechakit_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MECHAKIT_HOME", str(tmp_path / "home"))
    assert default_file() == str(tmp_path / "home" / "nr.db")
    resolver = SQLiteNameResolver()
    with pytest.raises(MetadataError, match="updateInterval"):
        await resolver.init(
            ComponentMetadata("nr", "nameresolution.sqlite", {"updateInterval": "0s"})
        )


def test_the_registry_knows_the_type() -> None:
    spec = Registry().resolve("nameresolution.sqlite", "v1")
    assert spec.load() is SQLiteNameResolver
