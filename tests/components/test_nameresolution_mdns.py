"""nameresolution.mdns: sidecars announce themselves by multicast DNS and find each other
with nothing shared; one that is killed without its goodbye is no longer picked once its
records' ttl has passed. Skipped where multicast does not loop back on 127.0.0.1."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from mechakit.components.nameresolution.mdns import MDNSNameResolver
from mechakit.conformance.backends_mdns import LOOPBACK, multicast_loops_back
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import MetadataError, NotFoundError
from mechakit.core.nameresolution import Registration, ResolveRequest
from mechakit.core.registry import Registry

_UNUSABLE = (
    "nameresolution.mdns needs zeroconf: pip install 'mechakit[mdns]'"
    if importlib.util.find_spec("zeroconf") is None
    else multicast_loops_back(LOOPBACK)
)
pytestmark = pytest.mark.skipif(_UNUSABLE is not None, reason=str(_UNUSABLE))

SETTINGS = {"interfaces": LOOPBACK, "ttl": "2s", "browseTimeout": "1s"}
EXPIRY_WAIT = 20.0
"""Generous bound for a dead sidecar's records to lapse (ttl 2s)."""

Open = Callable[..., Coroutine[Any, Any, MDNSNameResolver]]


@pytest.fixture
async def open_resolver() -> AsyncIterator[Open]:
    made: list[MDNSNameResolver] = []

    async def open_one(**properties: str) -> MDNSNameResolver:
        resolver = MDNSNameResolver()
        await resolver.init(ComponentMetadata("nr", "nameresolution.mdns", SETTINGS | properties))
        made.append(resolver)
        return resolver

    yield open_one
    for resolver in made:
        await resolver.close()


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def test_a_sidecar_announced_on_one_resolver_is_found_by_another(
    open_resolver: Open,
) -> None:
    callee, caller = await open_resolver(), await open_resolver()
    app = unique("svc-b")
    await callee.register(Registration(app, "127.0.0.1:50002"))
    assert await caller.resolve(ResolveRequest(app)) == "127.0.0.1:50002"
    with pytest.raises(NotFoundError, match=f"{app!r} in namespace 'prod'"):
        await caller.resolve(ResolveRequest(app, namespace="prod"))


async def test_resolve_spreads_over_the_live_instances(open_resolver: Open) -> None:
    first, second, caller = await open_resolver(), await open_resolver(), await open_resolver()
    app = unique("svc-b")
    await first.register(Registration(app, "127.0.0.1:1"))
    await second.register(Registration(app, "127.0.0.1:2"))
    await caller.resolve(ResolveRequest(app, exclude=frozenset({"127.0.0.1:1"})))  # both seen
    picked = {await caller.resolve(ResolveRequest(app)) for _ in range(60)}
    assert picked == {"127.0.0.1:1", "127.0.0.1:2"}


async def test_closing_sends_the_goodbye(open_resolver: Open) -> None:
    callee, caller = await open_resolver(), await open_resolver()
    app = unique("svc-b")
    await callee.register(Registration(app, "127.0.0.1:50002"))
    assert await caller.resolve(ResolveRequest(app)) == "127.0.0.1:50002"
    await callee.close()
    await _until_not_found(caller, app)


async def test_a_killed_sidecar_is_no_longer_picked_once_its_ttl_has_passed(
    open_resolver: Open,
) -> None:
    """A live sidecar answers when asked again after its ttl; the killed one cannot."""
    app, alive = unique("svc-dead"), unique("svc-alive")
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from mechakit.components.nameresolution.mdns import MDNSNameResolver
        from mechakit.core.component import ComponentMetadata
        from mechakit.core.nameresolution import Registration

        async def main():
            resolver = MDNSNameResolver()
            await resolver.init(ComponentMetadata("nr", "nameresolution.mdns", {SETTINGS!r}))
            await resolver.register(Registration({app!r}, "127.0.0.1:50009"))
            print("registered", flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert await process.stdout.readline() == b"registered\n"
        caller = await open_resolver()
        await caller.register(Registration(alive, "127.0.0.1:50010"))
        assert await caller.resolve(ResolveRequest(app)) == "127.0.0.1:50009"
        process.kill()  # no goodbye: only the ttl tells the others
        await process.wait()
        await _until_not_found(caller, app)
        assert await caller.resolve(ResolveRequest(alive)) == "127.0.0.1:50010"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _until_not_found(resolver: MDNSNameResolver, app: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EXPIRY_WAIT
    while loop.time() < deadline:
        try:
            await resolver.resolve(ResolveRequest(app))
        except NotFoundError:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{app} was still picked {EXPIRY_WAIT:g}s after it went away")


@pytest.mark.parametrize(
    ("properties", "field"),
    [({"interfaces": "eth0"}, "interfaces"), ({"ttl": "500ms"}, "ttl")],
)
async def test_settings_are_checked(properties: dict[str, str], field: str) -> None:
    with pytest.raises(MetadataError, match=f"nameresolution.mdns 'nr': metadata '{field}'"):
        await MDNSNameResolver().init(ComponentMetadata("nr", "nameresolution.mdns", properties))


def test_the_registry_knows_the_type() -> None:
    assert Registry().resolve("nameresolution.mdns", "v1").load() is MDNSNameResolver
