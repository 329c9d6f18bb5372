"""Start-up of many components: independent components start together, and the host still
keeps them in file order and judges each one's failure on its own.

A fault driver whose ``init`` waits until every one of its kind has begun its ``init`` can
only start if the host starts them concurrently; started one after another, the first would
wait for the others until its ``initTimeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import MetadataError
from mechakit.core.lock import LockStore, TryLockRequest, UnlockRequest, UnlockStatus
from mechakit.core.metadata import Settings
from mechakit.core.registry import ComponentSpec, Registry, hookimpl
from mechakit.runtime.host import ComponentHost
from mechakit.runtime.manifest import load_manifests

WriteFiles = Callable[..., Path]
MakeComponent = Callable[..., str]
PEERS = 3


class RendezvousLock(LockStore[Settings]):
    """Fault: ``init`` returns only once ``PEERS`` instances are inside ``init`` together;
    the last to arrive finishes first."""

    arrived: ClassVar[list[str]] = []
    everyone: ClassVar[asyncio.Event | None] = None

    async def init(self, metadata: ComponentMetadata) -> None:
        if RendezvousLock.everyone is None:
            RendezvousLock.everyone = asyncio.Event()
        RendezvousLock.arrived.append(metadata.name)
        if len(RendezvousLock.arrived) == PEERS:
            RendezvousLock.everyone.set()
        await RendezvousLock.everyone.wait()
        await asyncio.sleep(0.01 * (PEERS - RendezvousLock.arrived.index(metadata.name)))
        await super().init(metadata)

    async def try_lock(self, request: TryLockRequest) -> bool:
        raise NotImplementedError

    async def unlock(self, request: UnlockRequest) -> UnlockStatus:
        raise NotImplementedError


class RendezvousPlugin:
    @hookimpl
    def mechakit_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("lock.rendezvous", f"{__name__}:RendezvousLock")]


@pytest.fixture
def registry() -> Registry:
    RendezvousLock.arrived = []
    RendezvousLock.everyone = None
    return Registry([RendezvousPlugin()])


async def test_independent_components_start_together_and_stay_in_file_order(
    resources: WriteFiles,
    registry: Registry,
    component: MakeComponent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mechakit.host")
    files = {
        f"c{i}": component(f"lock{i}", "lock.rendezvous", extra="  initTimeout: 3s\n")
        for i in range(PEERS)
    }
    host = ComponentHost(load_manifests(resources(**files)), registry=registry)
    await host.start()
    try:
        assert list(host.components) == [f"lock{i}" for i in range(PEERS)]
        ready = [r.getMessage() for r in caplog.records if "ready" in r.getMessage()]
        assert ready == [f"component 'lock{i}' (lock.rendezvous/v1) ready" for i in range(PEERS)]
    finally:
        await host.close()
    closed = [r.getMessage() for r in caplog.records if "closed" in r.getMessage()]
    assert closed == [f"component 'lock{i}' (lock.rendezvous/v1) closed" for i in (2, 1, 0)]


async def test_a_failure_among_concurrent_starts_closes_the_others_and_names_the_component(
    resources: WriteFiles, registry: Registry, component: MakeComponent
) -> None:
    folder = resources(
        a=component("locks", "lock.in-memory"),
        b=component("broken", "state.sqlite"),
        c=component("skipped", "state.sqlite", extra="  ignoreErrors: true\n"),
        d=component("pubsub", "pubsub.in-memory"),
    )
    host = ComponentHost(load_manifests(folder), registry=registry)
    with pytest.raises(MetadataError) as caught:
        await host.start()
    assert "state.sqlite 'broken'" in str(caught.value)
    assert "b.yaml:1" in str(caught.value)
    assert host.components == {}
    assert "skipped" in host.skipped
