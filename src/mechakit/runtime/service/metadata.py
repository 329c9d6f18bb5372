"""The metadata API: what the sidecar runs, once for every door.

The extended metadata apps set (``PUT /v1.0/metadata/<key>``, gRPC ``SetMetadata``) is the
runtime's, so what one door sets the other reads, as with one daprd. So are the
subscriptions listed: what the delivery to the app subscribed (declarative and programmatic,
see :func:`list_delivered`), then every open streaming subscription (``type: STREAMING``,
see :func:`list_open_stream`), whichever door opened it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


@dataclass(eq=False)
class _Listed:
    """What one runtime's metadata lists: the delivery's subscriptions, the open streams."""

    delivered: Sequence[AppSubscription] | None = None
    streaming: dict[object, AppSubscription] = field(default_factory=dict)


_LISTED: weakref.WeakKeyDictionary[Runtime, _Listed] = weakref.WeakKeyDictionary()


def list_delivered(runtime: Runtime, subscriptions: Sequence[AppSubscription]) -> None:
    """Lists ``subscriptions`` (the delivery's own list, read when asked) as what the app
    receives; without one, the ``kind: Subscription`` resources in scope are listed."""
    _LISTED.setdefault(runtime, _Listed()).delivered = subscriptions


def list_open_stream(runtime: Runtime, subscription: AppSubscription) -> Callable[[], None]:
    """Lists ``subscription`` (an open stream's) until the returned function is called."""
    streaming = _LISTED.setdefault(runtime, _Listed()).streaming
    token = object()
    streaming[token] = subscription

    def unlist() -> None:
        streaming.pop(token, None)

    return unlist


class MetadataService:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def describe(
        self,
        *,
        subscriptions: Sequence[AppSubscription] | None = None,
        app: AppConnection | None = None,
    ) -> SidecarMetadata:
        """The sidecar's metadata. ``subscriptions``: what is delivered to the app (default:
        what :func:`list_delivered` gave, else the ``kind: Subscription`` resources in scope),
        listed before the open streaming subscriptions."""
        host = self._runtime.host
        listed = _LISTED.get(self._runtime) or _Listed()
        if subscriptions is None:
            subscriptions = listed.delivered
        if subscriptions is None:
            subscriptions = self._declared_subscriptions()
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
            subscriptions=[*subscriptions, *listed.streaming.values()],
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
