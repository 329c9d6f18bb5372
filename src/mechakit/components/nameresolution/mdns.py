"""nameresolution.mdns: sidecars of one network segment found by multicast DNS (DNS-SD),
as Dapr's self-hosted default, with no file or server shared.

Each sidecar announces one ``_mechakit._tcp.local.`` instance whose TXT record holds its
app id, namespace and internal gRPC address; every resolver keeps browsing that type, so
it knows the instances before it is asked. What an instance told counts while its SRV and
TXT records live (``ttl``); after that it is asked again before it is picked, so a sidecar
that died without its goodbye is no longer picked once its ``ttl`` has passed (zeroconf
keeps the pointer records themselves for at least 1125 s, so they cannot tell). Closing sends the goodbye.
Resolving picks a random live instance, waiting up to ``browseTimeout`` for an app id not
heard of yet. The records are
mechakit's own: daprd's mdns instances (another internal protocol) are not mixed in.
python-zeroconf (``pip install 'mechakit[mdns]'``) is imported when the component opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from mechakit.core.errors import (
    ComponentNotOpenError,
    ConnectionFailedError,
    InvalidRequestError,
    NotFoundError,
)
from mechakit.core.metadata import Duration, Settings, StrList, setting
from mechakit.core.nameresolution import NameRegistry, Registration, ResolveRequest

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_mechakit._tcp.local."
LOOKUP_TIMEOUT_MS = 3000
"""How long to wait for an instance's records (SRV and TXT) to answer."""
_LABEL_BYTES = 63
_SRV_AND_TXT = (33, 16)
"""DNS record types (RFC 2782, RFC 1035) that say an instance's address and data."""


class MDNSResolverSettings(Settings):
    interfaces: StrList = setting(
        (),
        description="IP addresses of the interfaces to announce and browse on; empty for all.",
        example="127.0.0.1",
    )
    ttl: Duration = setting(
        timedelta(seconds=10),
        description="How long others keep this sidecar's records without hearing from it.",
        example="10s",
    )
    browse_timeout: Duration = setting(
        timedelta(seconds=1),
        description="How long resolving waits for an app id not heard of yet.",
        example="1s",
    )

    @field_validator("interfaces")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address of an interface") from None
        return value

    @field_validator("ttl")
    @classmethod
    def _whole_seconds(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s (DNS records live whole seconds)")
        return value


@dataclass(frozen=True)
class Instance:
    """What one announced sidecar told in its TXT record, and until when it counts."""

    app_id: str
    namespace: str
    address: str
    fresh_until: float
    """Event-loop time after which it is asked again before being picked."""


class MDNSNameResolver(NameRegistry[MDNSResolverSettings]):
    """Sidecars of one network segment found through multicast DNS."""

    def __init__(self) -> None:
        super().__init__()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._instances: dict[str, Instance] = {}
        """Instance name → what it announced, for every instance the browser saw."""
        self._changed = asyncio.Event()
        self._looking: dict[str, asyncio.Task[None]] = {}
        self._own: AsyncServiceInfo | None = None

    async def open(self) -> None:
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        chosen = self.settings.interfaces
        v6 = any(ipaddress.ip_address(item).version == 6 for item in chosen)
        try:
            self._zc = AsyncZeroconf(
                interfaces=list(chosen) if chosen else InterfaceChoice.All,
                ip_version=IPVersion.All if v6 else IPVersion.V4Only,
            )
        except OSError as exc:
            where = ", ".join(chosen) or "every interface"
            raise ConnectionFailedError(
                f"cannot join the mDNS multicast group on {where}: {exc}",
                component=self.label,
                field="interfaces",
            ) from exc
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change]
        )

    async def shut(self) -> None:
        browser, self._browser = self._browser, None
        zc, self._zc = self._zc, None
        if browser is not None:
            await browser.async_cancel()
        if zc is not None:
            await zc.async_close()  # sends the goodbye of this sidecar's instance
        self._own = None
        self._instances.clear()

    async def resolve(self, request: ResolveRequest) -> str:
        self.opened(self._zc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.browse_timeout.total_seconds()
        while True:
            fresh, stale = self._matching(request)
            if stale and not fresh:
                await self._look_up_all(stale, wait=deadline - loop.time())
                fresh, stale = self._matching(request)
            elif stale:
                await self._look_up_all(stale, wait=0)  # for the next calls
            if fresh:
                return random.choice(fresh)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotFoundError(
                    f"no live sidecar of app id {request.app_id!r} in namespace "
                    f"{request.namespace!r} answered on mDNS",
                    component=self.label,
                    key=request.app_id,
                )
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _matching(self, request: ResolveRequest) -> tuple[list[str], list[str]]:
        """The addresses of the app id's fresh instances, and the names of its stale ones."""
        now = asyncio.get_running_loop().time()
        fresh: list[str] = []
        stale: list[str] = []
        for name, instance in self._instances.items():
            if (instance.app_id, instance.namespace) != (request.app_id, request.namespace):
                continue
            if instance.address in request.exclude:
                continue
            if instance.fresh_until > now:
                fresh.append(instance.address)
            else:
                stale.append(name)
        return fresh, stale

    async def register(self, registration: Registration) -> None:
        from zeroconf import Error as ZeroconfError
        from zeroconf.asyncio import AsyncServiceInfo

        zc = self.opened(self._zc)
        if self._own is not None:
            await self.unregister()
        host, port = _split_address(registration.address, self.label)
        ttl = int(self.settings.ttl.total_seconds())
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{_instance_label(registration.app_id)}.{SERVICE_TYPE}",
            port=port,
            properties={
                "appid": registration.app_id,
                "namespace": registration.namespace,
                "address": registration.address,
            },
            server=f"mechakit-{uuid.uuid4().hex[:12]}.local.",
            host_ttl=ttl,
            other_ttl=ttl,
            parsed_addresses=[host] if _is_ip(host) else None,
        )
        try:
            await zc.async_register_service(info, allow_name_change=True)
        except (ZeroconfError, OSError) as exc:
            raise ConnectionFailedError(
                f"cannot announce app id {registration.app_id!r} on mDNS: {exc}",
                component=self.label,
            ) from exc
        self._own = info

    async def unregister(self) -> None:
        own, self._own = self._own, None
        if own is None:
            return
        zc = self.opened(self._zc)
        await (await zc.async_unregister_service(own))
        self._instances.pop(own.name, None)  # its goodbye reaches this browser later
        self._notify()

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """The browser's callback, on the event loop."""
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            if self._instances.pop(name, None) is not None:
                self._notify()
            return
        with contextlib.suppress(ComponentNotOpenError):  # closing meanwhile
            self._looking_up(name)

    async def _look_up_all(self, names: list[str], *, wait: float) -> None:
        """Ask ``names`` again (once each at a time), waiting at most ``wait`` seconds."""
        tasks = [self._looking_up(name) for name in names]
        if wait > 0:
            await asyncio.wait(tasks, timeout=wait)

    def _looking_up(self, name: str) -> asyncio.Task[None]:
        task = self._looking.get(name)
        if task is None:
            task = self._looking[name] = self.start_task(self._look_up(name), name=name)
            task.add_done_callback(lambda _: self._looking.pop(name, None))
        return task

    async def _look_up(self, name: str) -> None:
        """Read instance ``name``'s records (from zeroconf's cache while they live, else from
        the network) and remember what it announced; one that does not answer stays stale."""
        from zeroconf.asyncio import AsyncServiceInfo

        zc = self.opened(self._zc)
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc.zeroconf, LOOKUP_TIMEOUT_MS):
            self.log.debug("%s: instance %s did not answer its lookup", self.label, name)
            return
        found = _instance(info.decoded_properties, _seconds_left(zc.zeroconf, name))
        if found is not None:
            self._instances[name] = found
            self._notify()

    def _notify(self) -> None:
        """Wake every resolve waiting for news."""
        self._changed.set()
        self._changed = asyncio.Event()


def _instance(properties: dict[str, Any], lasts: float) -> Instance | None:
    """What a TXT record announced, fresh for ``lasts`` seconds; None for a record that is
    not a mechakit sidecar's."""
    app_id, namespace, address = (properties.get(k) for k in ("appid", "namespace", "address"))
    if not (app_id and namespace and address):
        return None
    fresh_until = asyncio.get_running_loop().time() + lasts
    return Instance(str(app_id), str(namespace), str(address), fresh_until)


def _seconds_left(zc: Zeroconf, name: str) -> float:
    """How long the cached SRV and TXT records of instance ``name`` still live (an answer
    read from the cache may be nearly as old as its ttl)."""
    from zeroconf import current_time_millis

    now = current_time_millis()
    left = [
        record.get_remaining_ttl(now)
        for record in zc.cache.async_entries_with_name(name)
        if record.type in _SRV_AND_TXT
    ]
    return float(min(left, default=0))


def _instance_label(app_id: str) -> str:
    """``<app id>-<random>``, readable in mDNS browsers, within DNS's 63-byte label."""
    suffix = f"-{uuid.uuid4().hex[:8]}"
    stem = app_id.replace(".", "-").encode()[: _LABEL_BYTES - len(suffix)]
    return stem.decode(errors="ignore") + suffix


def _split_address(address: str, component: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequestError(
            f"address {address!r} is not host:port", component=component, field="address"
        )
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


__all__ = ["SERVICE_TYPE", "MDNSNameResolver", "MDNSResolverSettings"]
