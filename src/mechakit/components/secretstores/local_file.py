"""secretstores.local.file: secrets from a JSON file, for development.

The file is read once, at ``init`` (restart or re-init to pick up changes). Nested objects
and arrays are flattened with ``nestedSeparator`` (``{"db": {"password": "x"}}`` gives the
secret ``db:password``; array items get their index, ``hosts:0``). Each secret is then
``{name: value}``. With ``multiValued`` the top-level keys are the secrets, each a map of
its flattened children (``db`` → ``{"password": "x"}``), and the store declares
``MULTIPLE_KEY_VALUES_PER_SECRET``.

Values that are not strings are written as JSON writes them: ``true``, ``1.5``, exact big
integers, and ``null`` for null. Two entries that flatten to the same name (``{"a:b": 1,
"a": {"b": 2}}``), or a key repeated in one object, are an error naming both, where Dapr
silently keeps one of them.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mechakit.components._shared.requests import secret_name
from mechakit.core.errors import MetadataError, SecretNotFoundError
from mechakit.core.metadata import Bool, Settings, setting
from mechakit.core.secretstores import (
    BulkGetSecretRequest,
    GetSecretRequest,
    SecretStore,
    SecretStoreFeature,
)


class LocalFileSettings(Settings):
    secrets_file: str = setting(
        description="Path of the JSON file holding the secrets.",
        example="./secrets.json",
    )
    nested_separator: str = setting(
        ":",
        description="Joins the keys of nested objects into one secret name.",
        example=":",
    )
    multi_valued: Bool = setting(
        False,
        description="Top-level keys are secrets holding several key/value pairs (their flattened children).",
    )


class LocalFileSecretStore(SecretStore[LocalFileSettings]):
    def __init__(self) -> None:
        super().__init__()
        self._secrets: dict[str, dict[str, str]] = {}
        self._multi_valued = False

    async def open(self) -> None:
        settings = self.settings
        separator = settings.nested_separator or ":"
        document = await asyncio.to_thread(self._load, settings.secrets_file)
        try:
            if settings.multi_valued:
                self._secrets = {
                    name: _flatten(value, (name,), separator)
                    if _is_container(value)
                    else {name: _text(value)}
                    for name, value in document.items()
                }
            else:
                self._secrets = {
                    name: {name: value} for name, value in _flatten(document, (), separator).items()
                }
        except _DuplicateName as exc:
            raise self._unusable(settings.secrets_file, f"is not usable: {exc}") from None
        self._multi_valued = settings.multi_valued

    async def shut(self) -> None:
        self._secrets = {}

    async def ping(self) -> None:
        self.require_open()

    def features(self) -> frozenset[SecretStoreFeature]:
        if self._multi_valued:
            return frozenset({SecretStoreFeature.MULTIPLE_KEY_VALUES_PER_SECRET})
        return frozenset()

    async def get_secret(self, request: GetSecretRequest) -> dict[str, str]:
        self.require_open()
        secret = self._secrets.get(secret_name(request, component=self.label))
        if secret is None:
            raise SecretNotFoundError(
                f"secret {request.name!r} not found", component=self.label, key=request.name
            )
        return dict(secret)

    async def bulk_get_secret(self, request: BulkGetSecretRequest) -> dict[str, dict[str, str]]:
        self.require_open()
        return {name: dict(secret) for name, secret in self._secrets.items()}

    def _load(self, file_name: str) -> dict[str, Any]:
        """Reads and parses the file; every problem is a ``MetadataError`` naming it."""
        path = Path(file_name).expanduser()

        def fail(problem: str) -> MetadataError:
            return self._unusable(file_name, problem)

        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise fail(f"does not exist (resolved to {str(path.absolute())!r})") from None
        except IsADirectoryError:
            raise fail("is a folder, not a JSON file") from None
        except UnicodeDecodeError as exc:
            raise fail(f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise fail(f"cannot be read: {exc.strerror or exc}") from None
        try:
            document = json.loads(
                text,
                object_pairs_hook=_unique_object,
                parse_constant=_no_constant,
                parse_float=_finite_float,
            )
        except json.JSONDecodeError as exc:
            raise fail(
                f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except _DuplicateName as exc:
            raise fail(f"is not usable: {exc}") from None
        except ValueError as exc:
            raise fail(f"is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise fail(f"must hold a JSON object at the top, not {_json_kind(document)}")
        return document

    def _unusable(self, file_name: str, problem: str) -> MetadataError:
        return MetadataError(
            f"metadata 'secretsFile': {file_name!r} {problem}",
            component=self.label,
            field="secretsFile",
        )


class _DuplicateName(ValueError):
    """Two entries of the file would give the same secret name."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateName(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _no_constant(word: str) -> Any:
    raise ValueError(f"{word} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text} is too large for a 64-bit float")
    return value


def _is_container(value: object) -> bool:
    return isinstance(value, dict | list)


def _flatten(value: object, origin: tuple[str, ...], separator: str) -> dict[str, str]:
    """Every scalar below ``value`` by its flattened name (relative to ``origin``).

    Raises ``_DuplicateName`` naming both full paths when two scalars get one name.
    """
    flat: dict[str, str] = {}
    paths: dict[str, tuple[str, ...]] = {}
    for path, leaf in _leaves(value, origin):
        name = separator.join(path[len(origin) :])
        if name in flat:
            raise _DuplicateName(
                f"{_show_path(paths[name])} and {_show_path(path)} both flatten to "
                f"the secret name {name!r}; rename one of them"
            )
        flat[name], paths[name] = _text(leaf), path
    return flat


def _leaves(value: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _leaves(child, (*path, str(index)))
    else:
        yield path, value


def _show_path(path: tuple[str, ...]) -> str:
    return "".join(f"[{json.dumps(part)}]" for part in path)


def _text(value: object) -> str:
    """A secret value as text: strings as they are, anything else as JSON writes it."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return (
        "a number"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else "a boolean"
    )
