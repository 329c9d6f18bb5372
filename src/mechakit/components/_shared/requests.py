"""What drivers read from a request: a metadata option, a boolean flag, a secret's name.

Dapr passes per-request options as string metadata (``decodeBase64``, ``version_id``…);
these helpers read them alike in every driver, and word their errors alike.
"""

from __future__ import annotations

from collections.abc import Mapping

from mechakit.core.errors import InvalidRequestError
from mechakit.core.metadata import parse_bool
from mechakit.core.secretstores import GetSecretRequest


def metadata_value(metadata: Mapping[str, str], name: str) -> str:
    """The request metadata ``name``, matched case-insensitively; '' when absent or empty."""
    lowered = name.lower()
    return next((v for k, v in metadata.items() if k.lower() == lowered and v), "")


def metadata_flag(
    value: str, name: str, *, default: bool, component: str, key: str | None = None
) -> bool:
    """The boolean request metadata ``name`` given as ``value`` (``default`` when empty);
    a word that is not a boolean is an ``InvalidRequestError`` naming it."""
    if not value:
        return default
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise InvalidRequestError(
            f"metadata {name!r}: {exc}", component=component, key=key, field=name
        ) from None


def secret_name(request: GetSecretRequest, *, component: str) -> str:
    """The name a secret is asked for; an empty one is an ``InvalidRequestError``."""
    if not request.name:
        raise InvalidRequestError("the secret name is empty", component=component, field="name")
    return request.name


__all__ = ["metadata_flag", "metadata_value", "secret_name"]
