"""The one error of the Dapr service layer: a Dapr error code and a kind.

Every front door (HTTP, gRPC, the in-process clients) raises what the service raises; the
door only chooses how to say it (:data:`HTTP_STATUS`, the gRPC status table in
:mod:`mechakit.runtime.grpc_api`, the core error classes of :func:`as_component_error`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

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

if TYPE_CHECKING:
    from mechakit.runtime.in_process import Runtime

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


REASONS = {
    "ERR_STATE_STORE_NOT_FOUND": "DAPR_STATE_NOT_FOUND",
    "ERR_STATE_QUERY": "DAPR_STATE_QUERY_FAILED",
    "ERR_STATE_STORE_TOO_MANY_TRANSACTIONS": "DAPR_STATE_TOO_MANY_TRANSACTIONS",
    "ERR_PUBSUB_EMPTY": "DAPR_PUBSUB_NAME_EMPTY",
    "ERR_PUBSUB_NOT_FOUND": "DAPR_PUBSUB_NOT_FOUND",
    "ERR_TOPIC_NAME_EMPTY": "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
    "ERR_PUBSUB_FORBIDDEN": "DAPR_PUBSUB_FORBIDDEN",
    "ERR_PUBSUB_PUBLISH_MESSAGE": "DAPR_PUBSUB_PUBLISH_MESSAGE",
    "ERR_PUBSUB_REQUEST_METADATA": "DAPR_PUBSUB_METADATA_DESERIALIZATION",
    "ERR_PUBSUB_CLOUD_EVENTS_SER": "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
    "ERR_PUBSUB_EVENTS_SER": "DAPR_PUBSUB_UNMARSHAL_EVENTS",
    "ERR_INVOKE_OUTPUT_BINDING": "DAPR_BINDING_INVOKE_OUTPUT_BINDING",
    "ERR_TRY_LOCK": "DAPR_LOCK_TRY_LOCK_FAILED",
    "ERR_UNLOCK": "DAPR_LOCK_UNLOCK_FAILED",
}
"""Dapr's richer-error-model ``reason`` for the legacy codes that have one (Dapr's
``errorcodes`` table); a call may name a more precise one (``DAPR_STATE_ILLEGAL_KEY``)."""


class DaprError(MechakitError):
    """A failed call of the Dapr service: ``kind``, Dapr's legacy ``ERR_…`` ``code``, a
    message, and what Dapr's richer error model adds: the reason (``error_reason``,
    ``DAPR_…``, from :data:`REASONS` unless given), the ``resource`` (type and component name) and a
    ``field`` violation (field, description). A component's own error is ``__cause__``.
    """

    def __init__(
        self,
        kind: ErrorKind,
        code: str,
        message: str,
        *,
        reason: str | None = None,
        resource: tuple[str, str] | None = None,
        field: tuple[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.kind, self.code, self.message = kind, code, message
        self.error_reason = reason or REASONS.get(code)
        self.resource, self.violation = resource, field
        self.info = dict(metadata or {})
        super().__init__(message)

    def details(self) -> list[dict[str, Any]]:
        """The ``details`` of Dapr's error body: ``google.rpc`` messages as protojson."""
        if self.error_reason is None:
            return []
        found: list[dict[str, Any]] = [
            {
                "@type": TYPE_URL + "google.rpc.ErrorInfo",
                "reason": self.error_reason,
                "domain": DOMAIN,
                "metadata": self.info,
            }
        ]
        if self.resource is not None:
            found.append(
                {
                    "@type": TYPE_URL + "google.rpc.ResourceInfo",
                    "resourceType": self.resource[0],
                    "resourceName": self.resource[1],
                    "owner": "",
                    "description": "",
                }
            )
        if self.violation is not None:
            found.append(
                {
                    "@type": TYPE_URL + "google.rpc.BadRequest",
                    "fieldViolations": [
                        {"field": self.violation[0], "description": self.violation[1]}
                    ],
                }
            )
        return found


DOMAIN = "dapr.io"
TYPE_URL = "type.googleapis.com/"


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


def invalid(code: str, message: str, **rich: Any) -> DaprError:
    """An INVALID error; ``rich``: ``reason``, ``resource``, ``field`` of :class:`DaprError`."""
    return DaprError(ErrorKind.INVALID, code, message, **rich)


def lookup(
    get: Callable[[str], T],
    name: str,
    code: str,
    message: str = "",
    resource: tuple[str, str] | None = None,
) -> T:
    """The component ``name`` from ``get``; an unknown one is INVALID with ``code``."""
    try:
        return get(name)
    except (NotFoundError, ConfigurationError) as exc:
        text = f"{message}: {exc.reason}" if message else exc.reason
        raise invalid(code, text, resource=resource) from None


C = TypeVar("C")
R = TypeVar("R")


class BlockService(Generic[C]):
    """A building block's service over the runtime's components of ``CATEGORY``.

    A subclass says how Dapr answers for a name no component has: ``NOT_FOUND`` (the
    code), ``NOT_FOUND_MESSAGE`` (``{name}`` is the name) and ``RESOURCE`` (the
    ``ResourceInfo`` type Dapr adds, or None).
    """

    CATEGORY: ClassVar[str]
    NOT_FOUND: ClassVar[str]
    NOT_FOUND_MESSAGE: ClassVar[str]
    RESOURCE: ClassVar[str | None] = None

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    async def call(
        self, name: str, work: Callable[[], Awaitable[R]], *, repeatable: bool = True
    ) -> R:
        """``work()``, a call of component ``name``, under its resiliency policy if it has one
        (timeout, retries of retriable failures, circuit breaker). A call that is not
        ``repeatable`` is never retried: a conditional write or a lock call whose answer was
        lost may have been applied, and its repeat would answer a false conflict."""
        policy = self._runtime.resiliency.outbound(name)
        if policy is None:
            return await work()
        return await policy.run(work, retry=repeatable)

    def component(self, name: str) -> C:
        resource = (self.RESOURCE, name) if self.RESOURCE else None
        message = self.NOT_FOUND_MESSAGE.format(name=name)
        return lookup(self._find, name, self.NOT_FOUND, message, resource)

    def _find(self, name: str) -> C:
        found: C = self._runtime.component(name, self.CATEGORY)
        return found


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
def failure(code: str, what: str, resource: tuple[str, str] | None = None) -> Iterator[None]:
    """Turn a component's error into the service's: ``code`` and ``what`` name the call,
    ``resource`` the component (type, name) for Dapr's ``ResourceInfo``."""
    try:
        yield
    except DaprError:
        raise
    except PermissionDeniedError as exc:
        raise DaprError(
            ErrorKind.DENIED, "ERR_PERMISSION_DENIED", f"{what}: {exc}", resource=resource
        ) from exc
    except Exception as exc:
        kind = kind_of(exc)
        if kind in (ErrorKind.UNAVAILABLE, ErrorKind.INTERNAL):
            log.warning("%s: %s: %s", what, type(exc).__name__, exc)
        raise DaprError(kind, code, f"{what}: {_message(exc)}", resource=resource) from exc


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
