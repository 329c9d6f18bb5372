"""The metadata API: what the sidecar runs, once for every door.

The extended metadata apps set (``PUT /v1.0/metadata/<key>``, gRPC ``SetMetadata``) is the
runtime's, so what one door sets the other reads, as with one daprd.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mechakit import __version__

if TYPE_CHECKING:
    from mechakit.runtime.in_process import Runtime
    from mechakit.runtime.routing import AppSubscription

log = logging.getLogger("mechakit.runtime")


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    type: str
    version: str
    capabilities: list[str]


@dataclass(frozen=True)
class AppConnection:
    port: int
    protocol: str
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class SidecarMetadata:
    app_id: str
    runtime_version: str
    components: list[ComponentInfo]
    subscriptions: list[AppSubscription]
    extended: dict[str, str]
    app: AppConnection | None


class MetadataService:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def describe(
        self,
        *,
        subscriptions: Sequence[AppSubscription] | None = None,
        app: AppConnection | None = None,
    ) -> SidecarMetadata:
        """The sidecar's metadata. ``subscriptions``: what is delivered to the app (the
        ``kind: Subscription`` resources in scope when nothing is delivered)."""
        host = self._runtime.host
        components = [
            ComponentInfo(
                hosted.name, hosted.manifest.type, hosted.manifest.version, hosted.features()
            )
            for hosted in host.components.values()
        ]
        return SidecarMetadata(
            app_id=self._runtime.app_id,
            runtime_version=__version__,
            components=components,
            subscriptions=list(
                subscriptions if subscriptions is not None else self._declared_subscriptions()
            ),
            extended={"runtime": "mechakit", **self._runtime.extended_metadata},
            app=app,
        )

    def set(self, key: str, value: str) -> None:
        self._runtime.extended_metadata[key] = value

    def _declared_subscriptions(self) -> list[AppSubscription]:
        from mechakit.runtime.routing import AppSubscription, RouteSyntaxError

        found = []
        for manifest in self._runtime.host.subscriptions:
            try:
                found.append(AppSubscription.from_manifest(manifest))
            except RouteSyntaxError as exc:  # delivery refuses it too; listing it would lie
                log.debug("Subscription %r not listed: %s", manifest.name, exc)
        return found
