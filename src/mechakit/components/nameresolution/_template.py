"""Address templates of the computing resolvers (nameformat's ``{appid}``, kubernetes'
``{{.ID}}``): parsed and checked once when the component opens, filled per request."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mechakit.core.errors import InvalidRequestError
from mechakit.core.nameresolution import ResolveRequest

Field = Callable[[ResolveRequest], str]

REQUEST_FIELDS: Mapping[str, Field] = {
    "appid": lambda request: request.app_id,
    "namespace": lambda request: request.namespace,
    "port": lambda request: str(request.port),
}
"""What a placeholder can stand for, under the names of the nameformat syntax."""


@dataclass(frozen=True)
class Syntax:
    """How one resolver writes placeholders: ``pattern``'s group 1 is the name, ``names``
    maps each name the syntax knows to a field of ``REQUEST_FIELDS``."""

    pattern: re.Pattern[str]
    names: Mapping[str, str]
    spell: Callable[[str], str]
    """A name as written in a template, for error messages."""


BRACES = Syntax(
    re.compile(r"\{([^{}]*)\}"), {n: n for n in REQUEST_FIELDS}, lambda name: f"{{{name}}}"
)
"""``{appid}``, ``{namespace}``, ``{port}``."""

GO_TEMPLATE = Syntax(
    re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}"),
    {".ID": "appid", ".Namespace": "namespace", ".Port": "port"},
    lambda name: f"{{{{{name}}}}}",
)
"""Go text/template fields of Dapr's ResolveRequest: ``{{.ID}}``, ``{{.Namespace}}``,
``{{.Port}}`` (``{{.Data.x}}`` has nothing to read here: the request carries no data)."""


@dataclass(frozen=True)
class AddressTemplate:
    """A checked template: literal text and request fields, in order."""

    parts: tuple[str | Field, ...]
    fields: frozenset[str]
    """The ``REQUEST_FIELDS`` names it uses."""

    @classmethod
    def parse(cls, text: str, syntax: Syntax) -> AddressTemplate:
        """``ValueError`` saying what is wrong (empty, an unknown placeholder, a stray
        brace), for the settings model to report under the field's name."""
        if not text.strip():
            raise ValueError("must not be empty")
        parts: list[str | Field] = []
        used: set[str] = set()
        position = 0
        for match in syntax.pattern.finditer(text):
            parts.append(text[position : match.start()])
            name = syntax.names.get(match.group(1))
            if name is None:
                known = ", ".join(syntax.spell(n) for n in syntax.names)
                raise ValueError(f"unknown placeholder {match.group(0)!r} (known: {known})")
            parts.append(REQUEST_FIELDS[name])
            used.add(name)
            position = match.end()
        parts.append(text[position:])
        literal = "".join(part for part in parts if isinstance(part, str))
        if "{" in literal or "}" in literal:
            raise ValueError("has an unmatched brace")
        return cls(tuple(part for part in parts if part != ""), frozenset(used))

    def render(self, request: ResolveRequest, *, component: str) -> str:
        """The address for ``request``; one that needs the port when the caller gave none
        is an ``InvalidRequestError``."""
        if "port" in self.fields and request.port <= 0:
            raise InvalidRequestError(
                f"cannot resolve {request.app_id!r}: the address has a port placeholder "
                "and the caller gave no internal gRPC port",
                component=component,
                field="port",
            )
        return "".join(part if isinstance(part, str) else part(request) for part in self.parts)


__all__ = ["BRACES", "GO_TEMPLATE", "REQUEST_FIELDS", "AddressTemplate", "Syntax"]
