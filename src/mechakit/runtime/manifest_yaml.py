"""Reading manifest YAML safely, with the line of every value.

PyYAML's safe loader, refusing aliases (a billion-laughs document would expand before any
check), duplicate keys (the last would silently win) and nesting deeper than
:data:`MAX_NESTING`; each document comes with an index from field path to line, so that a
:class:`ManifestError` can name the line of the field it is about.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import yaml

from mechakit.core.errors import ManifestError
from mechakit.core.metadata import parse_bool

LineIndex: TypeAlias = dict[tuple[str | int, ...], int]


MAX_NESTING = 64
"""Deeper YAML is refused: the composer recurses, so a hostile file would crash it instead."""


class _Refused(yaml.YAMLError):
    """YAML that parses but a manifest must not contain; ``line`` is 1-based."""

    def __init__(self, reason: str, line: int) -> None:
        super().__init__(reason)
        self.reason, self.line = reason, line


class _ManifestLoader(yaml.SafeLoader):
    """The safe loader, refusing aliases, duplicate keys and deep nesting while composing.

    Checks run on the node graph before anything is constructed, so nothing is expanded.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._path: list[str | int | None] = []

    def compose_node(self, parent: yaml.Node | None, index: yaml.Node | int | None) -> Any:
        if isinstance(index, yaml.ScalarNode):
            self._path.append(str(index.value))
        else:
            self._path.append(index if isinstance(index, int) else None)
        try:
            if self.check_event(yaml.AliasEvent):
                event, line, column = self._next()
                name = getattr(event, "anchor", None) or ""
                raise _Refused(
                    f"{self._where()}: YAML alias '*{name}' (column {column}): aliases are not "
                    "allowed in manifests; write the value out in full",
                    line,
                )
            if len(self._path) > MAX_NESTING:
                _, line, column = self._next()
                raise _Refused(f"nested deeper than {MAX_NESTING} levels (column {column})", line)
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        keys: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            identity = (key_node.tag, key_node.value)
            if identity in keys:
                where = self._where(str(key_node.value))
                lines = (
                    f"twice on line {line}"
                    if keys[identity] == line
                    else f"on lines {keys[identity]} and {line}"
                )
                raise _Refused(
                    f"{where}: duplicate key {key_node.value!r} {lines}; keep one "
                    "(YAML would silently use the last)",
                    line,
                )
            keys[identity] = line
        return node

    def _next(self) -> tuple[yaml.Event, int, int]:
        """The next event and the 1-based line and column where it starts."""
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        return event, line, column

    def _where(self, key: str | None = None) -> str:
        path = tuple(part for part in self._path if part is not None)
        return format_path((*path, key) if key is not None else path) or "document"


def documents(text: str, file: str) -> list[tuple[int, Any, LineIndex]]:
    """Each document's first line, its data (safe loader), and the line of every field."""
    loader = _ManifestLoader(text)
    documents: list[tuple[int, Any, LineIndex]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: LineIndex = {}
            _index_lines(node, (), lines, depth=0)
            documents.append((node.start_mark.line + 1, loader.construct_document(node), lines))
    except _Refused as exc:
        raise ManifestError(exc.reason, file=f"{file}:{exc.line}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}: {problem}" if context else problem
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise ManifestError(f"invalid YAML{column}: {detail}", file=where) from None
    finally:
        loader.dispose()
    return documents


def _index_lines(
    node: yaml.Node, path: tuple[str | int, ...], lines: LineIndex, depth: int
) -> None:
    if depth > 32:
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = (*path, str(key_node.value))
                lines[child] = key_node.start_mark.line + 1
                _index_lines(value_node, child, lines, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            lines[(*path, position)] = item.start_mark.line + 1
            _index_lines(item, (*path, position), lines, depth + 1)


FieldPath: TypeAlias = tuple[str | int, ...]


def format_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class Document:
    """One YAML document being read: turns a field path and a complaint into a ManifestError."""

    def __init__(self, file: str, index: int, line: int, lines: LineIndex) -> None:
        self.file, self.index, self.line, self.lines = file, index, line, lines
        self.resource = f"document {index}"

    def name_from(self, data: Mapping[str, Any], kind: str | None = None) -> None:
        meta = data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(name, str) and name.strip():
            self.resource = f"{kind} {name!r}" if kind else repr(name)

    def line_of(self, path: FieldPath) -> int:
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return self.line

    def error(self, path: FieldPath, expected: str) -> ManifestError:
        where = format_path(path)
        return ManifestError(
            f"{where}: {expected}" if where else expected,
            file=f"{self.file}:{self.line_of(path)}",
            component=self.resource,
            field=where or None,
        )

    # typed readers -------------------------------------------------------------------

    def mapping(
        self, data: Mapping[str, Any], path: FieldPath, *, required: bool
    ) -> dict[str, Any]:
        value = _get(data, path[-1])
        if value is None:
            if required:
                raise self.error(path, "required, a mapping")
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {kind_of(value)}")
        return value

    def string(
        self, data: Mapping[str, Any], path: FieldPath, *, required: bool, example: str = ""
    ) -> str | None:
        value = _get(data, path[-1])
        hint = f" (e.g. {example})" if example else ""
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise self.error(path, f"required, a non-empty string{hint}")
            return None
        if not isinstance(value, str):
            raise self.error(path, f"expected a string{hint}, got {kind_of(value)} {value!r}")
        return value.strip()

    def boolean(self, data: Mapping[str, Any], path: FieldPath) -> bool:
        value = _get(data, path[-1])
        if value is None:
            return False
        try:
            return parse_bool(value)
        except ValueError:
            raise self.error(path, f"expected true or false, got {value!r}") from None

    def integer(self, data: Mapping[str, Any], path: FieldPath) -> int | None:
        value = _get(data, path[-1])
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(path, f"expected a whole number >= 0, got {value!r}")
        return value

    def strings(self, data: Mapping[str, Any], path: FieldPath) -> tuple[str, ...]:
        value = _get(data, path[-1])
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of strings, got {kind_of(value)}")
        for position, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.error((*path, position), f"expected a non-empty string, got {item!r}")
        return tuple(item.strip() for item in value)

    def api_version(self, data: Mapping[str, Any], kind: str, allowed: Sequence[str]) -> str:
        version = self.string(data, ("apiVersion",), required=True, example=allowed[-1])
        assert version is not None
        if version not in allowed:
            raise self.error(
                ("apiVersion",),
                f"unsupported apiVersion {version!r} for kind {kind} "
                f"(supported: {', '.join(allowed)})",
            )
        return version

    def metadata_name(self, data: Mapping[str, Any]) -> tuple[str, str | None]:
        meta = self.mapping(data, ("metadata",), required=True)
        name = self.string(meta, ("metadata", "name"), required=True)
        namespace = self.string(meta, ("metadata", "namespace"), required=False)
        assert name is not None
        return name, namespace


def _get(data: Mapping[str, Any], key: str | int) -> Any:
    return data.get(key) if isinstance(key, str) else None


def kind_of(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def scalar_text(value: object) -> str | None:
    """YAML scalars as Dapr reads them: numbers and booleans become their text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return None


def value_text(value: object) -> str | None:
    """A metadata value as Dapr passes it: scalars as text, mappings and lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        try:
            return json.dumps(value, separators=(",", ":"), default=_date_text)
        except (TypeError, ValueError):
            return None
    return scalar_text(value)


def _date_text(value: object) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
