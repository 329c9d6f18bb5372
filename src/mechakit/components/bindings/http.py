"""bindings.http: an output binding that sends one HTTP request per invocation.

The operation is the HTTP method (``get``, ``head``, ``post``, ``put``, ``patch``, ``delete``,
``options``, ``trace``; ``create`` is ``post``). As in Dapr, request metadata ``path`` is
appended to ``url``, metadata names starting with an upper-case letter are sent as headers
(``Content-Type``, ``Authorization``), as are ``traceparent``, ``tracestate`` and ``baggage``;
other lower-case metadata are not headers. Data is sent only by post, put and patch.

The response carries the body, and metadata ``statusCode``, ``status`` (``200 OK``) and every
response header (Go-style names, repeated values joined with ``, ``). A status outside 2xx
raises :class:`HTTPStatusError` (404: also a ``NotFoundError``) unless ``errorIfNot2XX`` is
false; the error keeps the response. A body over ``maxResponseBodySize`` is an error rather
than Dapr's silent truncation. Unreachable servers raise ``ConnectionFailedError``, and a
response slower than ``responseTimeout`` raises ``OperationTimeoutError``. A request is
sent once, never retried (a POST may not be idempotent): a request whose answer is lost or
late fails with a retriable error saying the server may or may not have acted on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import field_validator

from mechakit.components._shared.requests import metadata_flag
from mechakit.core.bindings import InvokeRequest, InvokeResponse, OutputBinding
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MetadataError,
    NotFoundError,
    OperationTimeoutError,
)
from mechakit.core.metadata import (
    Bool,
    ByteSize,
    Duration,
    Sensitive,
    Settings,
    setting,
)

if TYPE_CHECKING:
    import httpx


class HTTPSettings(Settings):
    ignored_metadata = frozenset({"direction", "route"})

    url: str = setting(
        description="Base URL every request goes to; request metadata 'path' is appended.",
        example="https://example.com/api",
    )
    response_timeout: Duration | None = setting(
        None,
        description="Longest wait for a whole response; unset waits as long as the server takes.",
        example="30s",
    )
    max_response_body_size: ByteSize = setting(
        100 * 2**20,
        description="Largest response body accepted; a larger one is an error. 0 means no limit.",
        example="10Mi",
    )
    error_if_not_2xx: Bool = setting(
        True,
        name="errorIfNot2XX",
        description="Raise for a status outside 2xx (a request may override it in its metadata).",
    )
    security_token: Sensitive | None = setting(
        None,
        description="A token sent with every request in the header named by securityTokenHeader.",
    )
    security_token_header: str = setting(
        "",
        description="The header that carries securityToken.",
        example="Authorization",
    )
    mtls_root_ca: str = setting("", name="MTLSRootCA", description="Not supported yet.")
    mtls_client_cert: str = setting("", name="MTLSClientCert", description="Not supported yet.")
    mtls_client_key: str = setting("", name="MTLSClientKey", description="Not supported yet.")
    mtls_renegotiation: str = setting(
        "", name="MTLSRenegotiation", description="Not supported yet."
    )

    @field_validator("url")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value.strip()


class HTTPStatusError(ComponentError):
    """The server answered with a status outside 2xx; ``response`` holds what it sent."""

    def __init__(
        self, reason: str, *, response: InvokeResponse, component: str | None = None
    ) -> None:
        self.response = response
        self.status_code = int(response.metadata.get("statusCode", "0"))
        super().__init__(reason, component=component)


class HTTPNotFoundError(HTTPStatusError, NotFoundError):
    """A 404 answer: both an ``HTTPStatusError`` and a ``NotFoundError``."""


class HTTPBinding(OutputBinding[HTTPSettings]):
    def __init__(self) -> None:
        super().__init__()
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        settings = self.settings
        for name in ("mtls_root_ca", "mtls_client_cert", "mtls_client_key", "mtls_renegotiation"):
            if getattr(settings, name):
                field = settings.dapr_name(name)
                raise MetadataError(
                    f"metadata {field!r}: mutual TLS is not supported by this binding yet",
                    component=self.label,
                    field=field,
                )
        if bool(settings.security_token) != bool(settings.security_token_header):
            raise MetadataError(
                "metadata 'securityToken' and 'securityTokenHeader' must be set together",
                component=self.label,
                field="securityTokenHeader" if settings.security_token else "securityToken",
            )
        import httpx

        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=15.0), follow_redirects=True
        )

    async def shut(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def operations(self) -> Sequence[str]:
        return list(_OPERATIONS)

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        import httpx

        operation = self.check_operation(request)
        client, settings = self.opened(self._client), self.settings
        method = _OPERATIONS[operation]
        url = _join(settings.url, request.metadata.get("path", ""))
        shown = _safe(url)
        body = request.data if method in ("POST", "PUT", "PATCH") else None
        headers = self._headers(request.metadata, has_body=body is not None)
        raise_for_status = self._error_if_not_2xx(request.metadata, settings)
        timeout = _seconds(settings.response_timeout)
        try:
            async with (
                asyncio.timeout(timeout),
                client.stream(method, url, content=body, headers=headers) as response,
            ):
                data = await self._read_body(response, settings.max_response_body_size, shown)
        except TimeoutError as exc:
            raise OperationTimeoutError(
                f"{method} {shown}: no complete response within responseTimeout ({timeout}s); "
                "the server may or may not have acted on it",
                component=self.label,
            ) from exc
        except httpx.InvalidURL as exc:
            raise InvalidRequestError(
                f"metadata 'path' makes an invalid URL {shown!r}: {exc}",
                component=self.label,
                field="path",
            ) from None
        except (httpx.LocalProtocolError, UnicodeEncodeError) as exc:
            raise InvalidRequestError(
                f"{method} {shown}: the request cannot be sent as given "
                f"(check header metadata): {exc}",
                component=self.label,
                field="metadata",
            ) from None
        except httpx.ConnectTimeout as exc:
            raise ConnectionFailedError(
                f"{method} {shown}: no connection within 15s", component=self.label
            ) from exc
        except httpx.TransportError as exc:
            unsent = isinstance(exc, httpx.ConnectError | httpx.ProxyError | httpx.PoolTimeout)
            outcome = "" if unsent else "; the server may or may not have acted on it"
            raise ConnectionFailedError(
                f"{method} {shown} failed: {type(exc).__name__}: {exc}{outcome}",
                component=self.label,
            ) from exc
        result = InvokeResponse(
            data=data,
            metadata=_response_metadata(response),
            content_type=response.headers.get("content-type"),
        )
        if raise_for_status and not 200 <= response.status_code < 300:
            error = HTTPNotFoundError if response.status_code == 404 else HTTPStatusError
            raise error(
                f"{method} {shown} answered {result.metadata['status']}{_excerpt(data)}",
                response=result,
                component=self.label,
            )
        return result

    async def _read_body(self, response: httpx.Response, limit: int, url: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if 0 < limit < size:
                raise ComponentError(
                    f"{response.request.method} {url}: response body exceeds "
                    f"maxResponseBodySize ({limit} bytes)",
                    component=self.label,
                    field="maxResponseBodySize",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _headers(self, metadata: Mapping[str, str], *, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json; charset=utf-8"}
        if has_body:
            headers["Content-Type"] = "application/json; charset=utf-8"
        settings = self.settings
        if settings.security_token and settings.security_token_header:
            headers[settings.security_token_header] = settings.security_token.get_secret_value()
        for key, value in metadata.items():
            if key[:1].isupper() or key in _TRACE_HEADERS:
                headers[key] = value
        return headers

    def _error_if_not_2xx(self, metadata: Mapping[str, str], settings: HTTPSettings) -> bool:
        value = metadata.get("errorIfNot2XX", "")
        return metadata_flag(
            value, "errorIfNot2XX", default=settings.error_if_not_2xx, component=self.label
        )


_OPERATIONS = {
    "create": "POST",
    "get": "GET",
    "head": "HEAD",
    "post": "POST",
    "put": "PUT",
    "patch": "PATCH",
    "delete": "DELETE",
    "options": "OPTIONS",
    "trace": "TRACE",
}
_TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})


def _join(base: str, path: str) -> str:
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")


def _safe(url: str) -> str:
    """The URL without user name and password, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None or value <= timedelta(0) else value.total_seconds()


def _response_metadata(response: httpx.Response) -> dict[str, str]:
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = response.reason_phrase
    metadata = {
        "statusCode": str(response.status_code),
        "status": f"{response.status_code} {phrase}".strip(),
    }
    for name, value in response.headers.multi_items():
        key = "-".join(part.capitalize() for part in name.split("-"))
        metadata[key] = f"{metadata[key]}, {value}" if key in metadata else value
    return metadata


def _excerpt(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", errors="replace").strip()
    if not text:
        return ""
    return f": {text}{'…' if len(data) > limit else ''}"
