"""The ``azure-servicebus`` conformance backend: a Service Bus namespace.

``MECHAKIT_TEST_SERVICEBUS_CONNECTION_STRING`` names one to use as it is (placeholder
``{backend.connection_string}``); its key needs Manage rights, since the suite's fresh
topic names are created on first use. There is no local binary. The official emulator
(mcr.microsoft.com/azure-messaging/servicebus-emulator, with its SQL Edge sidecar) is not
used: it serves only the entities declared in its config file and does not support
management operations from a client, so the suite's fresh topics cannot exist there; the
reason is given when no connection string is set. On this project's CI the row is skipped.
"""

from __future__ import annotations

from pathlib import Path

from .backends import Backend, BackendInfo, BackendUnavailable


class ServiceBusBackend(Backend):
    name = "azure-servicebus"
    env_var = "MECHAKIT_TEST_SERVICEBUS_CONNECTION_STRING"

    def parse_address(self, value: str) -> dict[str, str]:
        if "endpoint=sb://" not in value.lower():
            raise BackendUnavailable(f"{self.env_var} is not a Service Bus connection string")
        return {"connection_string": value}

    def start_local(self, workdir: Path) -> BackendInfo:
        raise BackendUnavailable("no local Service Bus server exists")

    def start_container(self) -> BackendInfo:
        raise BackendUnavailable(
            "the Service Bus emulator serves only the entities of its config file and "
            "refuses management operations, so the suite's fresh topics cannot be created "
            f"there; set {self.env_var} to a namespace's connection string (Manage rights)"
        )
