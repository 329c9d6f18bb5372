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


class DaprService:
    """Every building block's service over one started runtime."""

    def __init__(self, runtime: Runtime, *, max_bulk_keys: int = 0) -> None:
        self.state = StateService(runtime, max_bulk_keys=max_bulk_keys)
        self.pubsub = PubSubService(runtime, max_bulk_keys=max_bulk_keys)
        self.bindings = BindingsService(runtime)
        self.secrets = SecretsService(runtime)
        self.lock = LockService(runtime)
        self.metadata = MetadataService(runtime)
        self.configuration = ConfigurationService(runtime)


class Door:
    """What the HTTP and gRPC APIs share: the runtime, the Dapr service over it, and how the
    app is reached (which the metadata API reports)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        app_port: int | None = None,
        app_protocol: str = "http",
        max_bulk_keys: int = 0,
    ) -> None:
        self.runtime = runtime
        self.service = DaprService(runtime, max_bulk_keys=max_bulk_keys)
        self.app_port = app_port
        self.app_protocol = app_protocol

    def app_connection(self) -> AppConnection | None:
        return None if self.app_port is None else AppConnection(self.app_port, self.app_protocol)


__all__ = [
    "AppConnection",
    "BindingsService",
    "ConfigurationService",
    "DaprError",
    "DaprService",
    "Door",
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
