"""The Dapr service layer: one set of Dapr's request rules under every front door.

The HTTP API, the gRPC API and the in-process clients parse their own wire format into the
core request types and call a :class:`DaprService`; it looks the component up, applies
Dapr's rules (keys, TTL, rawPayload, the CloudEvent envelope, bulk limits) and raises one
error, :class:`DaprError`, with a Dapr error code and an :class:`ErrorKind` that each door
turns into its own status. A rule fixed here is fixed for all three.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bindings import BindingsService
from .configuration import ConfigurationService
from .errors import DaprError, ErrorKind, as_component_error, http_status
from .lock import LockService
from .metadata import AppConnection, MetadataService, SidecarMetadata
from .pubsub import PubSubService
from .secrets import SecretsService
from .state import StateService

if TYPE_CHECKING:
    from mechakit.runtime.in_process import Runtime
    from mechakit.runtime.resiliency import Policy


class DaprService:
    """Every building block's service over one started runtime."""

    def __init__(self, runtime: Runtime, *, max_bulk_keys: int = 0) -> None:
        def policies(name: str) -> Policy | None:
            return runtime.resiliency.outbound(name)

        self.state = StateService(
            lambda name: runtime.state(name).component,
            max_bulk_keys=max_bulk_keys,
            outbox=runtime.outbox,
            policies=policies,
        )
        self.pubsub = PubSubService(
            lambda name: runtime.pubsub(name).component,
            source=runtime.app_id,
            max_bulk_keys=max_bulk_keys,
            policies=policies,
        )
        self.bindings = BindingsService(lambda name: runtime.binding(name).component, policies)
        self.secrets = SecretsService(
            lambda name: runtime.secrets(name).component,
            lambda store, secret: runtime.host.allows_secret(store, secret),
            policies,
        )
        self.lock = LockService(lambda name: runtime.lock(name).component, policies)
        self.metadata = MetadataService(runtime)
        self.configuration = ConfigurationService(
            lambda name: runtime.configuration(name).component, policies
        )


__all__ = [
    "AppConnection",
    "BindingsService",
    "ConfigurationService",
    "DaprError",
    "DaprService",
    "ErrorKind",
    "LockService",
    "MetadataService",
    "PubSubService",
    "SecretsService",
    "SidecarMetadata",
    "StateService",
    "as_component_error",
    "http_status",
]
