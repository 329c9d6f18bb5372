"""nameresolution.kubernetes: the address Kubernetes DNS gives an app id's sidecar
service, ``<appid>-dapr.<namespace>.svc.<clusterDomain>:<port>`` (the port is the
caller's own internal gRPC port: every sidecar of a cluster listens on the same one), or
``template`` in Go template syntax (``{{.ID}}``, ``{{.Namespace}}``, ``{{.Port}}``).

Nothing registers: the cluster's DNS knows the services, and the name is looked up when
the caller connects, as in daprd.
"""

from __future__ import annotations

import re

from pydantic import field_validator

from mechakit.core.metadata import Settings, setting
from mechakit.core.nameresolution import NameResolver, ResolveRequest

from ._template import GO_TEMPLATE, AddressTemplate

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
_DOMAIN = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


class KubernetesResolverSettings(Settings):
    cluster_domain: str = setting(
        DEFAULT_CLUSTER_DOMAIN,
        description="The cluster's DNS domain; ignored when template is set.",
        example="cluster.local",
    )
    template: str = setting(
        "",
        description="The address in Go template syntax, instead of the sidecar service's name.",
        example="{{.ID}}-{{.Namespace}}.internal:{{.Port}}",
    )

    @field_validator("cluster_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not _DOMAIN.fullmatch(value):
            raise ValueError("must be a DNS domain such as cluster.local")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value:
            AddressTemplate.parse(value, GO_TEMPLATE)
        return value

    def address_template(self) -> str:
        if self.template:
            return self.template
        return f"{{{{.ID}}}}-dapr.{{{{.Namespace}}}}.svc.{self.cluster_domain}:{{{{.Port}}}}"


class KubernetesNameResolver(NameResolver[KubernetesResolverSettings]):
    """Sidecar service names of a Kubernetes cluster; no registry."""

    def __init__(self) -> None:
        super().__init__()
        self._template: AddressTemplate | None = None

    async def open(self) -> None:
        settings = self.settings
        if settings.template and "cluster_domain" in settings.model_fields_set:
            self.log.warning(
                "%s: clusterDomain is ignored since template is set (they are exclusive)",
                self.label,
            )
        self._template = AddressTemplate.parse(settings.address_template(), GO_TEMPLATE)

    async def resolve(self, request: ResolveRequest) -> str:
        return self.opened(self._template).render(request, component=self.label)


__all__ = ["DEFAULT_CLUSTER_DOMAIN", "KubernetesNameResolver", "KubernetesResolverSettings"]
