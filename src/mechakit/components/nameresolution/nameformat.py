"""nameresolution.nameformat: every app id's address from one pattern, such as
``{appid}.orders.svc.cluster.local:50002``, for platforms whose DNS already names the
sidecars. Nothing registers; resolving only fills the pattern, and the name is looked up
when the caller connects, as in daprd.

Placeholders: ``{appid}`` (Dapr's), and mechakit's ``{namespace}`` and ``{port}`` (the
caller's internal gRPC port). A pattern without ``{appid}`` is one static address for
every app id (Dapr insists on ``{appid}``; every pattern it accepts works here).
"""

from __future__ import annotations

from pydantic import field_validator

from mechakit.core.metadata import Settings, setting
from mechakit.core.nameresolution import NameResolver, ResolveRequest

from ._template import BRACES, AddressTemplate


class NameFormatSettings(Settings):
    format: str = setting(
        description="The address of an app id, with placeholders {appid}, {namespace}, {port}.",
        example="{appid}-dapr.default.svc.cluster.local:50002",
    )

    @field_validator("format")
    @classmethod
    def _template(cls, value: str) -> str:
        AddressTemplate.parse(value, BRACES)
        return value


class NameFormatResolver(NameResolver[NameFormatSettings]):
    """Addresses computed from ``format``; no registry, so nothing is ever not found."""

    def __init__(self) -> None:
        super().__init__()
        self._template: AddressTemplate | None = None

    async def open(self) -> None:
        self._template = AddressTemplate.parse(self.settings.format, BRACES)

    async def resolve(self, request: ResolveRequest) -> str:
        return self.opened(self._template).render(request, component=self.label)


__all__ = ["NameFormatResolver", "NameFormatSettings"]
