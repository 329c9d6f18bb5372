"""The Dapr HTTP API v1.0 over running components, as an ASGI app (Starlette).

``create_app(runtime)`` answers what a Dapr sidecar answers on its HTTP port for state,
publish, output bindings, secrets, locks, configuration (get, subscribe, unsubscribe),
metadata and health: the
same paths, status codes and ``{"errorCode": "ERR_…", "message": "…"}`` bodies, so Dapr
SDKs and curl examples work unchanged. ``mechakit run`` serves it with uvicorn.

Where Dapr answers 500 for something the request itself got wrong, we answer 4xx, so a
client error never looks like a failing sidecar to retry policies:

- a component that does not exist is always its ``…_NOT_FOUND`` error (Dapr says
  ``…_NOT_CONFIGURED`` with 500 when no component of that kind exists at all); an unknown
  output binding is 400 ``ERR_INVOKE_OUTPUT_BINDING``;
- a missing secret is 404 ``ERR_SECRET_GET``;
- a request a component rejects (bad ``ttlInSeconds``, unsupported operation) is 400 with
  the endpoint's error code, and so is a transaction or query on a store without that
  capability (``ERR_STATE_STORE_NOT_SUPPORTED``); an ETag conflict in a transaction is 409
  (invalid ETag 400) ``ERR_STATE_TRANSACTION``;
- a configuration subscribe without an app to deliver to (no ``--app-port``) is 400
  ``ERR_APP_CHANNEL_NIL``; unsubscribing an id this API did not hand out is 404
  ``{"ok": false, "errorCode": "ERR_CONFIGURATION_UNSUBSCRIBE", "message": …}``.

So 500 always means the backend failed.

Everything else, including Dapr's 401 for an unknown secret store, follows Dapr.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mechakit.core.bindings import InvokeRequest
from mechakit.core.configuration import ConfigurationUpdate
from mechakit.core.errors import (
    ConfigurationError,
    InvalidRequestError,
)
from mechakit.core.secretstores import GetSecretRequest
from mechakit.core.state import (
    DeleteRequest,
    GetRequest,
)

from . import bulk, http_routes, tracing_middleware
from . import http_codec as codec
from .http_guards import DEFAULT_READ_BODY_TIMEOUT, RequestGuard
from .http_routes import API_TOKEN_HEADER, Endpoint, Handler
from .in_process import Runtime
from .service import DaprError, Door, ErrorKind, http_status
from .service.errors import invalid
from .service.pubsub import EVENTS

if TYPE_CHECKING:
    from .delivery import Delivery
    from .routing import AppSubscription

log = logging.getLogger("mechakit.http")

DEFAULT_MAX_REQUEST_SIZE = 4 * 1024 * 1024
"""Dapr's default ``--dapr-http-max-request-size`` (4 MB)."""

METADATA_PREFIX = "metadata."
RAW_PAYLOAD = "rawPayload"
_HEALTH_PATHS = ("v1.0/healthz", "v1.0/healthz/outbound")

MALFORMED = "ERR_MALFORMED_REQUEST"

T = TypeVar("T")
P = ParamSpec("P")


class ApiError(Exception):
    """An error answer: HTTP status, Dapr's ``errorCode`` and ``message``, and the
    ``details`` of Dapr's richer error model (``ErrorInfo`` with the ``DAPR_…`` reason,
    ``ResourceInfo``, ``BadRequest``) where there are any."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []

    def response(self) -> Response:
        body: dict[str, Any] = {"errorCode": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return JSONResponse(body, self.status)


class DaprHttpApi(Door):
    """The Dapr HTTP API over a started ``runtime``: the handlers, and :attr:`app`, the ASGI
    application serving them (:func:`create_app` makes one and returns its app).

    ``api_token`` (from ``DAPR_API_TOKEN``) makes every call but the health checks carry
    the ``dapr-api-token`` header. Bodies over ``max_request_size`` bytes get 413, bodies
    not complete ``body_timeout`` seconds after the headers 408, bulk requests of more than
    ``max_bulk_keys`` items 400 (see :mod:`mechakit.runtime.bulk`). A request whose client
    disconnects is cancelled (:mod:`mechakit.runtime.http_guards`).
    ``delivery`` (``mechakit run --app-port``) carries configuration updates to the app and
    is what the metadata endpoint lists as subscriptions.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        api_token: str | None = None,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        app_port: int | None = None,
        app_protocol: str = "http",
        delivery: Delivery | None = None,
        body_timeout: float | None = DEFAULT_READ_BODY_TIMEOUT,
        max_bulk_keys: int = bulk.DEFAULT_MAX_BULK_KEYS,
    ) -> None:
        super().__init__(
            runtime, app_port=app_port, app_protocol=app_protocol, max_bulk_keys=max_bulk_keys
        )
        self.delivery = delivery
        self._configuration_watches: set[tuple[str, str]] = set()
        """(store, subscription id) of the configuration subscriptions made here."""
        self.endpoints = http_routes.endpoints(self)
        routes = [
            Route(e.path, _guarded(e.handler), methods=list(e.methods)) for e in self.endpoints
        ]
        token = Middleware(_TokenCheck, api_token=api_token or None)
        guard = Middleware(
            RequestGuard, max_request_size=max_request_size, body_timeout=body_timeout
        )
        self.app = Starlette(
            routes=routes,
            middleware=[
                token,
                Middleware(_AppIdHeader),
                Middleware(tracing_middleware.HttpTracing),
                guard,
            ],
            exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        )

    # --- state ---------------------------------------------------------------------------

    async def save_state(self, request: Request) -> Response:
        name = request.path_params["store"]
        self.service.state.component(name)
        items = codec.json_body(await request.body())
        if not isinstance(items, list):
            raise codec.malformed(f"expected a JSON array of state items, got {codec.kind(items)}")
        self.service.state.check_count(len(items), "state items")
        query = codec.query_metadata(request)
        requests = await bulk.map_chunked(
            lambda i, item: codec.set_request(item, f"item {i}", query), items
        )
        await self.service.state.save(name, requests)
        return Response(status_code=204)

    async def get_state(self, request: Request) -> Response:
        name = request.path_params["store"]
        self.service.state.component(name)
        options = codec.state_options(None, request.query_params.get("consistency"), "query")
        get = GetRequest(
            request.path_params["key"],
            codec.query_metadata(request),
            consistency=options.consistency,
        )
        item = await self.service.state.get(name, get)
        if item is None:
            return Response(status_code=204)
        headers = codec.metadata_headers(item.metadata)
        if item.etag is not None:
            headers["ETag"] = codec.header_value(item.etag)
        body, content_type = codec.state_body(item.value)
        return Response(body, 200, headers=headers, media_type=content_type)

    async def get_bulk_state(self, request: Request) -> Response:
        name = request.path_params["store"]
        self.service.state.component(name)
        body = codec.json_object(codec.json_body(await request.body()), "request body")
        keys = body.get("keys") or []
        if not isinstance(keys, list):
            raise codec.malformed(f"'keys' must be an array of strings, got {codec.kind(keys)}")
        parallelism = body.get("parallelism")
        if parallelism is not None and not codec.is_int(parallelism):
            raise codec.malformed(
                f"'parallelism' must be a whole number, got {codec.kind(parallelism)}"
            )
        self.service.state.check_count(len(keys), "keys")
        metadata = {
            **codec.string_map(body.get("metadata"), "metadata"),
            **codec.query_metadata(request),
        }
        requests = await bulk.map_chunked(
            lambda i, k: GetRequest(codec.key(k, f"keys[{i}]"), metadata), keys
        )
        found = await self.service.state.bulk_get(name, requests)
        results = await bulk.map_chunked(lambda _, item: codec.bulk_entry(item), found)
        return Response(await bulk.json_array(results), media_type="application/json")

    async def delete_state(self, request: Request) -> Response:
        name = request.path_params["store"]
        self.service.state.component(name)
        query = request.query_params
        options = codec.state_options(query.get("concurrency"), query.get("consistency"), "query")
        delete = DeleteRequest(
            request.path_params["key"],
            etag=request.headers.get("if-match"),
            metadata=codec.query_metadata(request),
            options=options,
        )
        await self.service.state.delete(name, delete)
        return Response(status_code=204)

    async def transact_state(self, request: Request) -> Response:
        name = request.path_params["store"]
        self.service.state.transactional(name)
        body = codec.json_object(codec.json_body(await request.body()), "request body")
        query = codec.query_metadata(request)
        metadata = {**codec.string_map(body.get("metadata"), "metadata"), **query}
        raw_operations = body.get("operations") or []
        if not isinstance(raw_operations, list):
            raise codec.malformed(
                f"'operations' must be an array, got {codec.kind(raw_operations)}"
            )
        self.service.state.check_count(len(raw_operations), "operations")
        operations = await bulk.map_chunked(
            lambda i, raw: codec.operation(raw, f"operations[{i}]", query), raw_operations
        )
        await self.service.state.transact(name, operations, metadata)
        return Response(status_code=204)

    async def query_state(self, request: Request) -> Response:
        name = request.path_params["store"]
        self.service.state.queryable(name)
        body = codec.json_object(codec.json_body(await request.body()), "query")
        response = await self.service.state.query(name, body, codec.query_metadata(request))
        if not response.results:
            return Response(status_code=204)
        results = []
        for item in response.results:
            entry: dict[str, Any] = {"key": item.key, "data": codec.state_data(item.value)}
            if item.etag is not None:
                entry["etag"] = item.etag
            if item.error:
                entry["error"] = item.error
            results.append(entry)
        out: dict[str, Any] = {"results": results}
        if response.token:
            out["token"] = response.token
        if response.metadata:
            out["metadata"] = dict(response.metadata)
        return JSONResponse(out)

    # --- pub/sub -------------------------------------------------------------------------

    async def publish(self, request: Request) -> Response:
        name = request.path_params["pubsub"]
        self.service.pubsub.component(name)
        await self.service.pubsub.publish(
            name,
            str(request.path_params["topic"]),
            await request.body(),
            request.headers.get("content-type") or "text/plain",
            codec.query_metadata(request),
        )
        return Response(status_code=204)

    async def bulk_publish(self, request: Request) -> Response:
        name = request.path_params["pubsub"]
        self.service.pubsub.component(name)
        body = codec.json_body(await request.body(), code=EVENTS)
        if not isinstance(body, list):
            raise invalid(EVENTS, f"expected a JSON array of entries, got {codec.kind(body)}")
        self.service.state.check_count(len(body), "entries")
        entries = await bulk.map_chunked(codec.bulk_publish_entry, body)
        result = await self.service.pubsub.bulk_publish(
            name, str(request.path_params["topic"]), entries, codec.query_metadata(request)
        )
        if result.failed:
            failed = [{"entryId": f.entry_id, "error": f.error} for f in result.failed]
            return JSONResponse(
                {"failedEntries": failed, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE"}, 500
            )
        return Response(status_code=204)

    # --- bindings ------------------------------------------------------------------------

    async def invoke_binding(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.service.bindings.component(name)
        body = codec.json_object(codec.json_body(await request.body()), "request body")
        operation = body.get("operation")
        if not isinstance(operation, str):
            raise codec.malformed("'operation' must be a non-empty string, e.g. create")
        metadata = codec.string_map(body.get("metadata"), "metadata")
        data = body.get("data")
        payload = (
            b""
            if data is None
            else data.encode()
            if isinstance(data, str)
            else json.dumps(data, separators=(",", ":")).encode()
        )
        result = await self.service.bindings.invoke(
            name, InvokeRequest(operation, payload, metadata)
        )
        headers = codec.metadata_headers(result.metadata)
        if not result.data:
            return Response(status_code=204, headers=headers)
        return Response(
            result.data, 200, headers=headers, media_type=result.content_type or "application/json"
        )

    # --- secrets -------------------------------------------------------------------------

    async def get_secret(self, request: Request) -> Response:
        secret = GetSecretRequest(request.path_params["name"], codec.query_metadata(request))
        return JSONResponse(await self.service.secrets.get(request.path_params["store"], secret))

    async def get_bulk_secret(self, request: Request) -> Response:
        found = await self.service.secrets.bulk_get(
            request.path_params["store"], codec.query_metadata(request)
        )
        return JSONResponse(found)

    # --- locks ---------------------------------------------------------------------------

    async def try_lock(self, request: Request) -> Response:
        name, body = await self._lock_request(request)
        expiry = codec.field(body, "expiryInSeconds", "expiry_in_seconds")
        success = await self.service.lock.try_lock(
            name, *codec.lock_owner(body), codec.proto_int(expiry, "expiryInSeconds")
        )
        return JSONResponse({"success": success})

    async def unlock(self, request: Request) -> Response:
        name, body = await self._lock_request(request)
        status = await self.service.lock.unlock(name, *codec.lock_owner(body))
        return JSONResponse({"status": int(status)})

    async def _lock_request(self, request: Request) -> tuple[str, dict[str, Any]]:
        name = request.path_params["store"]
        self.service.lock.component(name)
        return name, codec.json_object(codec.json_body(await request.body()), "request body")

    # --- configuration -------------------------------------------------------------------

    async def get_configuration(self, request: Request) -> Response:
        items = await self.service.configuration.get(
            request.path_params["store"],
            request.query_params.getlist("key"),
            codec.query_metadata(request),
        )
        if not items:
            return Response(status_code=204)
        return JSONResponse(
            {
                key: {"value": item.value, "version": item.version, "metadata": dict(item.metadata)}
                for key, item in items.items()
            }
        )

    async def subscribe_configuration(self, request: Request) -> Response:
        name = request.path_params["store"]
        self.service.configuration.component(name)
        delivery = self.delivery
        if delivery is None:
            raise invalid(
                "ERR_APP_CHANNEL_NIL",
                "app channel is not initialized. cannot subscribe to configuration updates "
                "(start mechakit run with --app-port)",
            )

        async def send(update: ConfigurationUpdate) -> None:
            await delivery.send_configuration(name, update)

        subscription_id = await self.service.configuration.subscribe(
            name, request.query_params.getlist("key"), send, codec.query_metadata(request)
        )
        self._configuration_watches.add((name, subscription_id))
        return JSONResponse({"id": subscription_id})

    async def unsubscribe_configuration(self, request: Request) -> Response:
        name = request.path_params["store"]
        subscription_id = request.path_params["id"]
        watch = (name, subscription_id)
        self.service.configuration.component(name)
        try:
            if watch not in self._configuration_watches:
                raise DaprError(
                    ErrorKind.NOT_FOUND,
                    "ERR_CONFIGURATION_UNSUBSCRIBE",
                    f"failed to unsubscribe to configuration request {subscription_id}: "
                    f"no subscription {subscription_id!r} in configuration store {name}",
                )
            self._configuration_watches.discard(watch)
            await self.service.configuration.unsubscribe(name, subscription_id, missing_ok=True)
        except DaprError as exc:
            return _unsubscribe_failed(exc)
        return JSONResponse({"ok": True})

    # --- metadata, health, OpenAPI ---------------------------------------------------------

    # --- service invocation ----------------------------------------------------------------

    async def invoke(self, request: Request) -> Response:
        from .service.invocation import Invocation

        invoker = self.runtime.invoker
        if invoker is None:
            raise ApiError(500, "ERR_DIRECT_INVOKE", "service invocation needs 'mechakit run'")
        invocation = Invocation(
            method=request.path_params["method"],
            verb=request.method,
            query=request.url.query,
            headers=tuple(request.headers.items()),
            body=await _invocation_body(request),
        )
        reply = await invoker.invoke(request.path_params["app_id"], invocation)
        headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in reply.headers
            if k.lower() != "content-length"
        ]
        if isinstance(reply.body, bytes):
            response = Response(reply.body, reply.status)
            headers.append((b"content-length", str(len(reply.body)).encode()))
        else:
            response = StreamingResponse(reply.body, reply.status)
        response.raw_headers = headers
        return response

    async def get_metadata(self, request: Request) -> Response:
        delivered = self.delivery.subscriptions if self.delivery is not None else None
        found = self.service.metadata.describe(subscriptions=delivered, app=self.app_connection())
        body: dict[str, Any] = {
            "id": found.app_id,
            "runtimeVersion": found.runtime_version,
            "enabledFeatures": [],
            "components": [
                {
                    "name": c.name,
                    "type": c.type,
                    "version": c.version,
                    "capabilities": c.capabilities,
                }
                for c in found.components
            ],
            "subscriptions": [_subscription_entry(s) for s in found.subscriptions],
            "extended": found.extended,
        }
        if found.app is not None:
            body["appConnectionProperties"] = {
                "port": found.app.port,
                "protocol": found.app.protocol,
                "channelAddress": found.app.address,
            }
        return JSONResponse(body)

    async def put_metadata(self, request: Request) -> Response:
        body = await request.body()
        try:
            value = body.decode()
        except UnicodeDecodeError:
            raise codec.malformed("the metadata value must be UTF-8 text") from None
        self.service.metadata.set(request.path_params["key"], value)
        return Response(status_code=204)

    async def healthz(self, request: Request) -> Response:
        if not self._ready():
            raise ApiError(500, "ERR_HEALTH_NOT_READY", "dapr is not ready: components not started")
        wanted = request.query_params.get("appid")
        if wanted is not None and wanted != self.runtime.app_id:
            raise ApiError(500, "ERR_HEALTH_APPID_NOT_MATCH", "dapr app-id does not match")
        return Response(status_code=204)

    async def healthz_outbound(self, request: Request) -> Response:
        if not self._ready():
            raise ApiError(500, "ERR_OUTBOUND_HEALTH_NOT_READY", "dapr outbound is not ready")
        return Response(status_code=204)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.openapi_document())

    def openapi_document(self) -> dict[str, Any]:
        """OpenAPI 3.1, generated from the same table the routes are built from."""
        return http_routes.openapi_document(
            self.endpoints, public={self.healthz, self.healthz_outbound}
        )

    def _ready(self) -> bool:
        with contextlib.suppress(ConfigurationError):
            return self.runtime.host is not None
        return False


# --- middleware and error rendering ---------------------------------------------------------


def _app_of(api: Callable[P, DaprHttpApi]) -> Callable[P, Starlette]:
    def create_app(*args: P.args, **kwargs: P.kwargs) -> Starlette:
        """The ASGI app of a :class:`DaprHttpApi` made with these arguments."""
        return api(*args, **kwargs).app

    return create_app


create_app = _app_of(DaprHttpApi)
"""``create_app(runtime, api_token=..., ...)``: the Dapr HTTP API as an ASGI app (the
arguments are :class:`DaprHttpApi`'s)."""


class _TokenCheck:
    """The API token check, before the body is read or any route runs."""

    def __init__(self, app: ASGIApp, *, api_token: str | None) -> None:
        self.app = app
        self.token = api_token.encode() if api_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token is not None and not _is_health_check(scope):
            given = dict(scope["headers"]).get(API_TOKEN_HEADER.encode(), b"")
            if not hmac.compare_digest(given, self.token):
                await PlainTextResponse("invalid api token", 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _AppIdHeader:
    """``dapr-app-id: svc-b`` on any path is ``/v1.0/invoke/svc-b/method/<path>``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not str(scope["path"]).startswith("/v1.0/invoke/"):
            target = dict(scope["headers"]).get(b"dapr-app-id")
            if target:
                path = f"/v1.0/invoke/{target.decode('latin-1')}/method{scope['path']}"
                scope = {**scope, "path": path, "raw_path": path.encode("latin-1")}
        await self.app(scope, receive, send)


def _is_health_check(scope: Scope) -> bool:
    return scope["method"] == "GET" and str(scope["path"]).strip("/") in _HEALTH_PATHS


def _guarded(handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            try:
                return await handler(request)
            except DaprError as exc:
                raise ApiError(http_status(exc), exc.code, exc.message, exc.details()) from exc
        except ApiError as exc:
            if exc.status >= 500:
                log.warning("%s %s: %s", request.method, request.url.path, exc.message)
            else:
                log.debug("%s %s: %s", request.method, request.url.path, exc.message)
            return exc.response()
        except InvalidRequestError as exc:  # raised while reading the request, before any call
            log.debug("%s %s: %s", request.method, request.url.path, exc)
            return ApiError(400, "ERR_MALFORMED_REQUEST", str(exc)).response()
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return ApiError(500, "ERR_INTERNAL", "internal error; see the runtime's log").response()

    return run


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"mechakit does not serve {request.method} {request.url.path}"
        return ApiError(404, "ERR_API_UNIMPLEMENTED", message).response()
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        response = ApiError(405, "ERR_METHOD_NOT_ALLOWED", message).response()
        response.headers.update(exc.headers or {})
        return response
    return ApiError(exc.status_code, "ERR_BAD_REQUEST", str(exc.detail)).response()


def _unsubscribe_failed(error: DaprError) -> Response:
    """Dapr's unsubscribe failure body (``ok``, ``message``), with our ``errorCode``."""
    body = {"ok": False, "errorCode": error.code, "message": error.message}
    return JSONResponse(body, http_status(error))


async def _invocation_body(request: Request) -> bytes | AsyncIterator[bytes]:
    """The body of an invocation: whole when short, else its chunks as they come (the
    request guard left it unread, see :mod:`.http_guards`)."""
    from .service.invocation_messages import streams

    chunked = "transfer-encoding" in request.headers
    if streams(request.headers.get("content-length"), chunked):
        return request.stream()
    return await request.body()


def _subscription_entry(subscription: AppSubscription) -> dict[str, Any]:
    """A subscription as Dapr's metadata API shows it (the default route as a rule without match)."""
    rules = [{"match": r.match, "path": r.path} for r in subscription.rules]
    if subscription.default_route:
        rules.append({"match": "", "path": subscription.default_route})
    return {
        "pubsubname": subscription.pubsub_name,
        "topic": subscription.topic,
        "metadata": dict(subscription.metadata),
        "rules": rules,
        "deadLetterTopic": subscription.dead_letter_topic or "",
        "type": subscription.type,
    }


__all__ = ["DEFAULT_MAX_REQUEST_SIZE", "ApiError", "DaprHttpApi", "Endpoint", "create_app"]
