"""The in-process runtime: components from Dapr YAML, used straight from Python.

``async with mechakit.open("components/", app_id="myapp") as rt:`` loads the manifests,
starts every component (see :mod:`mechakit.runtime.host`), hands out typed clients
(``rt.state("statestore")``), and on exit stops the subscriptions those clients started,
then closes the components in reverse order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mechakit.core.building_blocks import BUILDING_BLOCKS
from mechakit.core.component import Component
from mechakit.core.errors import ConfigurationError
from mechakit.core.registry import Registry

from .clients import (
    BindingClient,
    ConfigurationClient,
    LockClient,
    PubSubClient,
    SecretsClient,
    StateClient,
    SubscriptionTracker,
)
from .host import ComponentHost, HostedComponent
from .manifest import Manifests, PathLike, SubscriptionManifest, load_manifests
from .outbox import Outbox
from .resiliency import Resiliency
from .service import DaprService

if TYPE_CHECKING:
    from .service.invocation import Invoker

ClientT = TypeVar("ClientT")


class Runtime:
    """Components of a folder (or files) of Dapr YAML, for one app id."""

    def __init__(
        self,
        resources: PathLike | Sequence[PathLike] | Manifests,
        *,
        app_id: str = "",
        registry: Registry | None = None,
        configuration: str | None = None,
    ) -> None:
        self._resources = resources
        self.app_id = app_id
        self._registry = registry
        self._configuration = configuration
        self._host: ComponentHost | None = None
        self._tracker = SubscriptionTracker()
        self._clients: dict[tuple[str, str], Any] = {}
        self._service: DaprService | None = None
        self.resiliency = Resiliency()
        """The outbound policies of ``kind: Resiliency`` resources (:mod:`.resiliency`)."""
        self.outbox = Outbox(self)
        """The transactional outbox of the outbox-enabled state stores (:mod:`.outbox`)."""
        self.extended_metadata: dict[str, str] = {}
        """What apps set through the metadata API (one sidecar, one set, for every door)."""
        self.invoker: Invoker | None = None
        """Service invocation to other apps' sidecars; set by ``mechakit run``."""

    async def start(self) -> Runtime:
        """Load the manifests and start every component; nothing stays running on failure."""
        if self._host is not None:
            return self
        resources = self._resources
        manifests = (
            resources
            if isinstance(resources, Manifests)
            else await asyncio.to_thread(load_manifests, resources)
        )
        self.resiliency = Resiliency.of(manifests.resiliencies, self.app_id)
        host = ComponentHost(
            manifests,
            app_id=self.app_id,
            registry=self._registry,
            configuration=self._configuration,
        )
        await host.start()
        self._host = host
        try:
            await self.outbox.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Stop what clients started, then close the components (last started first)."""
        await self.outbox.stop()
        host, self._host = self._host, None
        self._clients.clear()
        await self._tracker.cancel_all()
        if host is not None:
            await host.close()

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def host(self) -> ComponentHost:
        if self._host is None:
            raise ConfigurationError(
                "the runtime is not started: use 'async with mechakit.open(...) as rt' "
                "or 'await rt.start()'"
            )
        return self._host

    @property
    def components(self) -> Mapping[str, HostedComponent]:
        """The running components by name, in start order."""
        return self.host.components

    @property
    def subscriptions(self) -> list[SubscriptionManifest]:
        """Declarative subscriptions in scope (served by ``mechakit run``; listed here)."""
        return self.host.subscriptions

    @property
    def service(self) -> DaprService:
        """The Dapr service layer the typed clients call (no cap on bulk requests here;
        ``mechakit run`` gives its HTTP and gRPC APIs their own, with the cap)."""
        if self._service is None:
            self._service = DaprService(self)
        return self._service

    # --- typed clients -------------------------------------------------------------

    def state(self, name: str) -> StateClient:
        return self._client(name, "state", StateClient, self.service.state)

    def pubsub(self, name: str) -> PubSubClient:
        return self._client(name, "pubsub", PubSubClient, self.service.pubsub)

    def lock(self, name: str) -> LockClient:
        return self._client(name, "lock", LockClient, self.service.lock)

    def secrets(self, name: str) -> SecretsClient:
        return self._client(name, "secretstores", SecretsClient, self.service.secrets)

    def binding(self, name: str) -> BindingClient:
        return self._client(name, "bindings", BindingClient, self.service.bindings)

    def configuration(self, name: str) -> ConfigurationClient:
        return self._client(name, "configuration", ConfigurationClient, self.service.configuration)

    def component(self, name: str, category: str) -> Any:
        """The running component ``name`` of ``category``, checked to implement its building
        block's contract."""
        hosted = self.host.get(name, category)
        instance: Component[Any] = hosted.instance
        block = BUILDING_BLOCKS[category]
        if not isinstance(instance, block.contracts):
            contract = " or ".join(c.__name__ for c in block.contracts)
            raise ConfigurationError(
                f"{hosted.spec.target} does not implement {contract}, so it cannot be used "
                f"as a {block.noun}",
                component=instance.label,
            )
        return instance

    def _client(
        self, name: str, category: str, cls: Callable[..., ClientT], service: object
    ) -> ClientT:
        """The one client of component ``name`` (made on first use), checked to implement
        its building block's contract."""
        key = (category, name)
        if key not in self._clients:
            component = self.component(name, category)
            self._clients[key] = cls(component, service, tracker=self._tracker)
        client: ClientT = self._clients[key]
        return client


__all__ = ["Runtime"]
