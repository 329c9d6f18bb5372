"""Output bindings: invoking an operation, once for every door."""

from __future__ import annotations

from typing import Any

from mechakit.core.bindings import InvokeRequest, InvokeResponse, OutputBinding
from mechakit.core.component import Component
from mechakit.core.errors import NotSupportedError

from .errors import BlockService, failure, invalid
from .state import MALFORMED


class BindingsService(BlockService[Component[Any]]):
    """The output bindings ``find`` looks up by name."""

    CATEGORY = "bindings"
    NOT_FOUND = "ERR_INVOKE_OUTPUT_BINDING"
    NOT_FOUND_MESSAGE = "error invoking output binding {name}"

    async def invoke(self, name: str, request: InvokeRequest) -> InvokeResponse:
        binding = self.component(name)
        if not request.operation.strip():
            raise invalid(MALFORMED, "operation must be non-empty, e.g. create")
        with failure(
            "ERR_INVOKE_OUTPUT_BINDING", f"error invoking output binding {name}", ("binding", name)
        ):
            if not isinstance(binding, OutputBinding):
                raise NotSupportedError(
                    "it is an input binding only; it has no operations to invoke",
                    component=binding.label,
                )
            return await self.call(name, lambda: binding.invoke(request))
