"""Output bindings: invoking an operation, once for every door."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechakit.core.bindings import InvokeRequest, InvokeResponse, OutputBinding
from mechakit.core.component import Component
from mechakit.core.errors import NotSupportedError

from .errors import failure, invalid, lookup
from .state import MALFORMED


class BindingsService:
    """The output bindings ``find`` looks up by name."""

    def __init__(self, find: Callable[[str], Component[Any]]) -> None:
        self._find = find

    def binding(self, name: str) -> Component[Any]:
        return lookup(
            self._find, name, "ERR_INVOKE_OUTPUT_BINDING", f"error invoking output binding {name}"
        )

    async def invoke(self, name: str, request: InvokeRequest) -> InvokeResponse:
        binding = self.binding(name)
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
            return await binding.invoke(request)
