"""The one error of the Dapr service layer: a Dapr error code and a kind.

Every front door (HTTP, gRPC, the in-process clients) raises what the service raises; the
door only chooses how to say it (:data:`HTTP_STATUS`, the gRPC status table in
:mod:`mechakit.runtime.grpc_api`, the core error classes of :func:`as_component_error`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from mechakit.core.errors import (
    BulkError,
    ComponentError,
    ConfigurationError,
    ETagError,
    ETagErrorKind,
    InvalidRequestError,
    MechakitError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
)

log = logging.getLogger("mechakit.runtime")

T = TypeVar("T")


class ErrorKind(enum.Enum):
    """What went wrong, independent of how a door says it."""

    INVALID = "invalid"
    """The request is wrong: fixing the request fixes it."""
    NOT_FOUND = "not found"
    CONFLICT = "conflict"
    """An ETag or first-write check failed; nothing was written."""
    DENIED = "denied"
    UNSUPPORTED = "unsupported"
    """The component does not offer the operation (a transaction on a store without them)."""
    UNAVAILABLE = "unavailable"
    """The backend failed in a way that a retry may fix."""
    INTERNAL = "internal"


class DaprError(MechakitError):
    """A failed call of the Dapr service: ``kind``, Dapr's ``ERR_…`` ``code``, a message.

    A component's own error is kept as ``__cause__``.
    """

    def __init__(self, kind: ErrorKind, code: str, message: str) -> None:
        self.kind, self.code, self.message = kind, code, message
        super().__init__(message)


HTTP_STATUS = {
    ErrorKind.INVALID: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.DENIED: 403,
    ErrorKind.UNSUPPORTED: 400,
    ErrorKind.UNAVAILABLE: 500,
    ErrorKind.INTERNAL: 500,
}
"""The HTTP status of each kind. Dapr answers a failed backend call with 500 whether or not
a retry may help, so UNAVAILABLE is 500 too (gRPC tells the two apart)."""

HTTP_STATUS_BY_CODE = {
    "ERR_PUBSUB_NOT_FOUND": 404,
    "ERR_SECRET_STORE_NOT_FOUND": 401,
    "ERR_TOPIC_NAME_EMPTY": 404,
}
"""Where Dapr's HTTP API answers a code with another status than its kind's."""


def http_status(error: DaprError) -> int:
    return HTTP_STATUS_BY_CODE.get(error.code, HTTP_STATUS[error.kind])


def invalid(code: str, message: str) -> DaprError:
    return DaprError(ErrorKind.INVALID, code, message)


def lookup(get: Callable[[str], T], name: str, code: str, message: str = "") -> T:
    """The component ``name`` from ``get``; an unknown one is INVALID with ``code``."""
    try:
        return get(name)
    except (NotFoundError, ConfigurationError) as exc:
        raise invalid(code, f"{message}: {exc.reason}" if message else exc.reason) from None


def kind_of(error: Exception) -> ErrorKind:
    """The kind of a component's error."""
    if isinstance(error, ETagError):
        return ErrorKind.CONFLICT if error.kind is ETagErrorKind.MISMATCH else ErrorKind.INVALID
    if isinstance(error, PermissionDeniedError):
        return ErrorKind.DENIED
    if isinstance(error, InvalidRequestError | NotSupportedError):
        return ErrorKind.INVALID
    if isinstance(error, NotFoundError):
        return ErrorKind.NOT_FOUND
    if isinstance(error, BulkError):
        return _bulk_kind(error.errors.values())
    if getattr(error, "retriable", False):
        return ErrorKind.UNAVAILABLE
    return ErrorKind.INTERNAL


def _bulk_kind(errors: Iterable[Exception]) -> ErrorKind:
    """A conflict if any item conflicted, invalid if every item was invalid, else internal."""
    kinds = {kind_of(e) for e in errors}
    if ErrorKind.CONFLICT in kinds:
        return ErrorKind.CONFLICT
    if kinds == {ErrorKind.INVALID}:
        return ErrorKind.INVALID
    if kinds == {ErrorKind.UNAVAILABLE}:
        return ErrorKind.UNAVAILABLE
    return ErrorKind.INTERNAL


def _message(error: Exception) -> str:
    if isinstance(error, BulkError):
        return "; ".join(f"{key!r}: {e}" for key, e in error.errors.items())
    return str(error)


@contextlib.contextmanager
def failure(code: str, what: str) -> Iterator[None]:
    """Turn a component's error into the service's: ``code`` and ``what`` name the call."""
    try:
        yield
    except DaprError:
        raise
    except PermissionDeniedError as exc:
        raise DaprError(ErrorKind.DENIED, "ERR_PERMISSION_DENIED", f"{what}: {exc}") from exc
    except Exception as exc:
        kind = kind_of(exc)
        if kind in (ErrorKind.UNAVAILABLE, ErrorKind.INTERNAL):
            log.warning("%s: %s: %s", what, type(exc).__name__, exc)
        raise DaprError(kind, code, f"{what}: {_message(exc)}") from exc


_CORE_ERROR: dict[ErrorKind, type[ComponentError]] = {
    ErrorKind.INVALID: InvalidRequestError,
    ErrorKind.NOT_FOUND: NotFoundError,
    ErrorKind.DENIED: PermissionDeniedError,
    ErrorKind.UNSUPPORTED: NotSupportedError,
}


def as_component_error(error: DaprError) -> Exception:
    """What the in-process clients raise for ``error``: the component's own error when it
    came from one (``ETagError``, ``BulkError`` …), else the core error of its kind."""
    cause = error.__cause__
    if isinstance(cause, MechakitError):
        return cause
    return _CORE_ERROR.get(error.kind, ComponentError)(error.message)
