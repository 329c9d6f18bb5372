"""Typed component settings decoded from Dapr's string metadata.

A driver declares a :class:`Settings` subclass; the class is the single source of
validation, defaults, documentation and the JSON schema. Dapr metadata arrive as strings
with case-insensitive names, so decoding maps names case-insensitively (and through
aliases) and converts strings with Dapr's conventions: Go durations, Kubernetes byte
sizes, comma lists, and strict booleans (an unknown word is an error, not ``False``).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from .errors import MetadataError

logger = logging.getLogger("mechakit.metadata")

_TRUE = frozenset({"y", "yes", "true", "t", "on", "1"})
_FALSE = frozenset({"n", "no", "false", "f", "off", "0"})


def parse_bool(value: object) -> bool:
    """Dapr's truthy words, plus their negatives; anything else is rejected."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"not a boolean: {value!r} (use true/false, yes/no, on/off, 1/0)")


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: object) -> timedelta:
    """A Go duration (``1m30s``, ``500ms``, ``-2h``) or a whole number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return timedelta(seconds=int(text))
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    seconds, pos = 0.0, 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ValueError(f"not a duration: {value!r} (use e.g. 5s, 1m30s, 500ms or whole seconds)")
    return timedelta(seconds=sign * seconds)


def format_duration(value: timedelta) -> str:
    """The shortest Go-style text for a duration (used for defaults in docs and schema)."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms == 0:
        return "0s"
    sign = "-" if total_ms < 0 else ""
    total_ms = abs(total_ms)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if ms and not (hours or minutes or secs):
        parts.append(f"{ms}ms")
    elif secs or ms:
        parts.append(f"{secs}.{ms:03d}".rstrip("0").rstrip(".") + "s")
    return sign + "".join(parts)


_SIZE_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKMGTPE]i?)?")


def parse_bytesize(value: object) -> int:
    """A Kubernetes quantity (``10Mi``, ``1G``, ``512k``) or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not a byte size: {value!r} (use e.g. 1024, 512k, 10Mi, 1G)")
    return int(float(match.group(1)) * _SIZE_SUFFIXES[match.group(2) or ""])


def parse_list(value: object) -> tuple[str, ...]:
    """A comma-separated list; blanks around items and empty items are dropped."""
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value if str(v).strip())
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    raise ValueError(f"not a comma-separated list: {value!r}")


Bool = Annotated[
    bool,
    BeforeValidator(parse_bool),
    WithJsonSchema({"type": "string", "format": "boolean", "examples": ["true", "false"]}),
]
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "format": "duration", "examples": ["5s", "1m30s"]}),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_bytesize),
    WithJsonSchema({"type": "string", "format": "bytesize", "examples": ["512k", "10Mi"]}),
]
StrList = Annotated[
    tuple[str, ...],
    BeforeValidator(parse_list),
    WithJsonSchema({"type": "string", "format": "comma-separated list"}),
]
Sensitive = SecretStr
"""A value never logged, printed, or shown in errors; read it with ``get_secret_value()``."""


def _at_least(minimum: int) -> AfterValidator:
    def check(value: int) -> int:
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return AfterValidator(check)


PositiveInt = Annotated[int, _at_least(1)]
"""A whole number of at least 1 (a pool size, a connection count)."""
NonNegativeInt = Annotated[int, _at_least(0)]
"""A whole number of at least 0 (a database number, a retry count)."""


def setting(
    default: Any = ...,
    *,
    name: str | None = None,
    aliases: tuple[str, ...] = (),
    description: str = "",
    example: str | None = None,
) -> Any:
    """Declare one metadata field: its default, docs, an example, and aliases.

    ``...`` as default (the default) makes the field required. The Dapr name is the field's
    name in camelCase (``table_name`` → ``tableName``); ``name`` is for the Dapr names that
    are not (``enableTLS``), so that a name is written once.
    """
    extra: dict[str, Any] = {}
    if aliases:
        extra["x-aliases"] = list(aliases)
    if example is not None:
        extra["examples"] = [example]
    return Field(default, alias=name, description=description or None, json_schema_extra=extra)


def timeout_setting(default: timedelta, *, description: str) -> Any:
    """Dapr's ``timeout`` field of a database driver, also accepted under its older name
    ``timeoutInSeconds``; the default is the example."""
    return setting(
        default,
        aliases=("timeoutInSeconds",),
        description=description,
        example=format_duration(default),
    )


@dataclass(frozen=True)
class FieldDoc:
    """One metadata field as shown by ``mechakit components show``."""

    name: str
    type: str
    required: bool
    default: str | None
    sensitive: bool
    description: str
    aliases: tuple[str, ...]
    example: str | None


class Settings(BaseModel):
    """Base of every driver's typed settings.

    Field names are Python names; each field's alias is its Dapr metadata name.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        frozen=True,
        extra="ignore",
    )

    ignored_metadata: ClassVar[frozenset[str]] = frozenset()
    """Metadata names (lower case) accepted without a warning though no field reads them."""

    @classmethod
    def _names(cls) -> dict[str, str]:
        """Lower-case Dapr name, alias or Python name → Python field name."""
        names: dict[str, str] = {}
        for field_name, info in cls.model_fields.items():
            for candidate in (field_name, info.alias, *_aliases(info)):
                if candidate:
                    names[candidate.lower()] = field_name
        return names

    @classmethod
    def dapr_name(cls, field_name: str) -> str:
        info = cls.model_fields[field_name]
        return info.alias or field_name

    @classmethod
    def from_metadata(
        cls,
        properties: Mapping[str, str],
        *,
        component: str,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> Self:
        """Decode Dapr metadata; raise one :class:`MetadataError` that lists every problem."""
        names = cls._names()
        data: dict[str, Any] = {}
        seen: dict[str, str] = {}
        problems: list[str] = []
        for key, value in properties.items():
            field_name = names.get(key.lower())
            if field_name is None:
                if key.lower() not in cls.ignored_metadata and key.lower() not in _RUNTIME_METADATA:
                    _warn_unknown(key, names, cls, component, log or logger)
                continue
            if field_name in seen:
                problems.append(
                    f"metadata {key!r} and {seen[field_name]!r} both set {cls.dapr_name(field_name)!r}"
                )
                continue
            seen[field_name] = key
            data[field_name] = value
        try:
            settings = cls.model_validate(data)
        except ValidationError as exc:
            problems.extend(_describe(cls, exc, seen))
            settings = None
        if problems or settings is None:
            first = _first_field(problems)
            raise MetadataError("; ".join(problems), component=component, field=first)
        return settings

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON schema of the metadata, under the Dapr names; sensitive fields marked."""
        schema = cls.model_json_schema(by_alias=True, mode="validation")
        props: dict[str, Any] = schema.get("properties", {})
        for field_name, info in cls.model_fields.items():
            entry = props.get(info.alias or field_name)
            if entry is None:
                continue
            if _is_sensitive(info):
                entry["sensitive"] = True
                entry.pop("default", None)
            elif info.default is not None and isinstance(info.default, timedelta):
                entry["default"] = format_duration(info.default)
        return schema

    @classmethod
    def fields_doc(cls) -> Iterator[FieldDoc]:
        for field_name, info in cls.model_fields.items():
            schema = cls.json_schema()["properties"].get(info.alias or field_name, {})
            default: str | None = None
            if not info.is_required() and not _is_sensitive(info):
                default = _show_default(info.get_default(call_default_factory=True))
            examples = schema.get("examples") or [None]
            yield FieldDoc(
                name=info.alias or field_name,
                type=str(schema.get("format") or schema.get("type") or _type_name(schema)),
                required=info.is_required(),
                default=default,
                sensitive=_is_sensitive(info),
                description=info.description or "",
                aliases=tuple(_aliases(info)),
                example=None if examples[0] is None else str(examples[0]),
            )

    def redacted(self) -> dict[str, Any]:
        """The settings under their Dapr names, sensitive values masked (safe to log or serve)."""
        out: dict[str, Any] = {}
        for field_name, info in type(self).model_fields.items():
            value = getattr(self, field_name)
            name = info.alias or field_name
            if isinstance(value, SecretStr):
                out[name] = "******" if value.get_secret_value() else ""
            else:
                out[name] = _show_default(value)
        return out


# Metadata the runtime or Dapr itself reads, accepted by every component without a warning.
_RUNTIME_METADATA = frozenset(
    {
        "actorstatestore",
        "consumerid",
        "outboxpublishpubsub",
        "outboxpublishtopic",
        "outboxpubsub",
        "outboxdiscardwhenmissingstate",
    }
)


def _aliases(info: FieldInfo) -> list[str]:
    extra = info.json_schema_extra
    if isinstance(extra, dict):
        aliases = extra.get("x-aliases")
        if isinstance(aliases, list):
            return [str(a) for a in aliases]
    return []


def _is_sensitive(info: FieldInfo) -> bool:
    annotation = info.annotation
    return annotation is SecretStr or (
        getattr(annotation, "__args__", None) is not None and SecretStr in annotation.__args__  # type: ignore[union-attr]
    )


def _show_default(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)


def _type_name(schema: Mapping[str, Any]) -> str:
    for option in schema.get("anyOf", []):
        if option.get("type") not in (None, "null"):
            return str(option.get("format") or option["type"])
    if "enum" in schema:
        return "enum"
    return "string"


def _warn_unknown(
    key: str,
    names: Mapping[str, str],
    cls: type[Settings],
    component: str,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    known = sorted({cls.dapr_name(f) for f in names.values()})
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or difflib.get_close_matches(
        key.lower(), [k.lower() for k in known], n=1, cutoff=0.6
    )
    hint = ""
    if close:
        match = next((k for k in known if k.lower() == close[0].lower()), close[0])
        hint = f"; did you mean {match!r}?"
    log.warning("%s: unknown metadata %r is ignored%s", component, key, hint)


def _describe(cls: type[Settings], exc: ValidationError, seen: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc = str(error["loc"][0]) if error["loc"] else ""
        field_name = cls._names().get(loc.lower(), loc)
        info = cls.model_fields.get(field_name)
        name = seen.get(field_name) or (cls.dapr_name(field_name) if info else field_name)
        if error["type"] == "missing":
            example = None
            if info is not None and isinstance(info.json_schema_extra, dict):
                examples = info.json_schema_extra.get("examples")
                if isinstance(examples, list) and examples:
                    example = examples[0]
            hint = f" (e.g. {example})" if example else ""
            problems.append(f"metadata {name!r} is required{hint}")
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        if info is not None and _is_sensitive(info):
            problems.append(f"metadata {name!r} is invalid: {error['type']}")
        elif message.startswith("not a"):
            problems.append(f"metadata {name!r}: {message}")
        else:
            problems.append(f"metadata {name!r} is invalid: {message} (got {error['input']!r})")
    return problems


def _first_field(problems: list[str]) -> str | None:
    for problem in problems:
        match = re.search(r"metadata '([^']+)'", problem)
        if match:
            return match.group(1)
    return None


__all__ = [
    "Bool",
    "ByteSize",
    "Duration",
    "FieldDoc",
    "NonNegativeInt",
    "PositiveInt",
    "Sensitive",
    "Settings",
    "StrList",
    "format_duration",
    "parse_bool",
    "parse_bytesize",
    "parse_duration",
    "parse_list",
    "setting",
    "timeout_setting",
]
