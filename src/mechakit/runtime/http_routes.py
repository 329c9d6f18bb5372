"""The HTTP API's routes, as one table: what Starlette serves and what
``/v1.0/openapi.json`` documents (:func:`openapi_document`) come from the same entries."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from mechakit import __version__

if TYPE_CHECKING:
    from .http_api import DaprHttpApi

API_TOKEN_HEADER = "dapr-api-token"
INVOKE_VERBS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
"""HEAD comes with GET (Starlette adds it)."""

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One route: what Starlette serves and what ``/v1.0/openapi.json`` documents."""

    methods: tuple[str, ...]
    path: str
    handler: Handler
    summary: str
    responses: Mapping[int, str] = field(default_factory=dict)
    body: str | None = None
    """A description of the request body, or None when it has none."""


def endpoints(api: DaprHttpApi) -> list[Endpoint]:
    """Every route of the API, in matching order."""
    state_item = (
        "JSON array of {key, value, etag?, metadata?, options?: {concurrency, consistency}}"
    )
    missing = {400: "malformed request or unknown state store"}
    return [
        Endpoint(
            ("POST", "PUT"),
            "/v1.0/state/{store}/bulk",
            api.get_bulk_state,
            "Get many keys",
            {200: "array of {key, data?, etag?, metadata?, error?}", **missing},
            "JSON object {keys: [string], parallelism?, metadata?}",
        ),
        Endpoint(
            ("POST", "PUT"),
            "/v1.0/state/{store}/transaction",
            api.transact_state,
            "Apply upserts and deletes atomically",
            {
                204: "applied",
                409: "ETag mismatch",
                **missing,
                500: "the transaction failed",
            },
            "JSON object {operations: [{operation: upsert|delete, request}], metadata?}",
        ),
        Endpoint(
            ("POST", "PUT"),
            "/v1.0-alpha1/state/{store}/query",
            api.query_state,
            "Query state (stores with QUERY_API)",
            {
                200: "{results: [{key, data, etag?}], token?}",
                204: "no results",
                **missing,
            },
            "JSON object {filter?, sort?, page?}",
        ),
        Endpoint(
            ("POST", "PUT"),
            "/v1.0/state/{store}",
            api.save_state,
            "Save state",
            {204: "saved", 409: "ETag mismatch or first-write conflict", **missing},
            state_item,
        ),
        Endpoint(
            ("GET",),
            "/v1.0/state/{store}/{key:path}",
            api.get_state,
            "Get one key",
            {200: "the value (ETag header)", 204: "no such key", **missing},
        ),
        Endpoint(
            ("DELETE",),
            "/v1.0/state/{store}/{key:path}",
            api.delete_state,
            "Delete one key (If-Match: ETag)",
            {204: "deleted", 409: "ETag mismatch", **missing},
        ),
        *(
            Endpoint(
                ("POST", "PUT"),
                f"/{version}/publish/bulk/{{pubsub}}/{{topic:path}}",
                api.bulk_publish,
                "Publish many events",
                {
                    204: "all published",
                    400: "malformed request",
                    404: "unknown pub/sub",
                    500: "{failedEntries: [{entryId, error}], errorCode}",
                },
                "JSON array of {entryId, event, contentType, metadata?}",
            )
            for version in ("v1.0-alpha1", "v1.0")
        ),
        Endpoint(
            ("POST", "PUT"),
            "/v1.0/publish/{pubsub}/{topic:path}",
            api.publish,
            "Publish an event (wrapped in a CloudEvent unless metadata.rawPayload=true)",
            {
                204: "published",
                400: "malformed request",
                404: "unknown pub/sub or no topic",
                500: "the broker failed",
            },
            "the payload, typed by Content-Type (default text/plain)",
        ),
        Endpoint(
            ("POST", "PUT"),
            "/v1.0/bindings/{name}",
            api.invoke_binding,
            "Invoke an output binding",
            {
                200: "the binding's data (metadata.* headers)",
                204: "no data",
                400: "malformed request, unknown binding or unsupported operation",
            },
            "JSON object {operation, data?, metadata?}",
        ),
        Endpoint(
            ("GET",),
            "/v1.0/secrets/{store}/bulk",
            api.get_bulk_secret,
            "Every secret the app may read",
            {200: "{name: {key: value}}", 401: "unknown secret store"},
        ),
        Endpoint(
            ("GET",),
            "/v1.0/secrets/{store}/{name:path}",
            api.get_secret,
            "Get one secret",
            {
                200: "{key: value}",
                401: "unknown secret store",
                403: "denied by the secret scopes",
                404: "no such secret",
            },
        ),
        Endpoint(
            ("POST",),
            "/v1.0-alpha1/lock/{store}",
            api.try_lock,
            "Try to take a lock",
            {200: "{success: bool}", 400: "malformed request or unknown lock store"},
            "JSON object {resourceId, lockOwner, expiryInSeconds}",
        ),
        Endpoint(
            ("POST",),
            "/v1.0-alpha1/unlock/{store}",
            api.unlock,
            "Release a lock",
            {
                200: "{status: 0 success, 1 no such lock, 2 held by another owner}",
                400: "malformed request or unknown lock store",
            },
            "JSON object {resourceId, lockOwner}",
        ),
        Endpoint(
            ("GET",),
            "/v1.0/configuration/{store}",
            api.get_configuration,
            "Get configuration items (?key=a&key=b; none: all)",
            {
                200: "{key: {value, version, metadata}}",
                204: "no items",
                400: "unknown configuration store",
            },
        ),
        Endpoint(
            ("GET",),
            "/v1.0-alpha1/configuration/{store}",
            api.get_configuration,
            "Get configuration items (?key=a&key=b; none: all)",
            {
                200: "{key: {value, version, metadata}}",
                204: "no items",
                400: "unknown configuration store",
            },
        ),
        *(
            endpoint
            for version in ("v1.0", "v1.0-alpha1")
            for endpoint in _configuration_subscription_endpoints(api, version)
        ),
        Endpoint(
            ("GET",),
            "/v1.0/metadata",
            api.get_metadata,
            "The app id, components (never their metadata values) and subscriptions",
            {
                200: "{id, runtimeVersion, components: [{name, type, version, capabilities}], "
                "subscriptions, extended}"
            },
        ),
        Endpoint(
            ("PUT",),
            "/v1.0/metadata/{key}",
            api.put_metadata,
            "Set an extended metadata attribute",
            {204: "set"},
            "the value as text",
        ),
        Endpoint(
            ("GET",),
            "/v1.0/healthz",
            api.healthz,
            "Health (no API token needed)",
            {204: "healthy", 500: "not ready"},
        ),
        Endpoint(
            ("GET",),
            "/v1.0/healthz/outbound",
            api.healthz_outbound,
            "Components ready (no API token needed)",
            {204: "ready", 500: "not ready"},
        ),
        Endpoint(
            ("GET",), "/v1.0/openapi.json", api.openapi, "This document", {200: "OpenAPI 3.1"}
        ),
    ]


def _configuration_subscription_endpoints(api: DaprHttpApi, version: str) -> list[Endpoint]:
    return [
        Endpoint(
            ("GET",),
            f"/{version}/configuration/{{store}}/subscribe",
            api.subscribe_configuration,
            "Have changes to configuration items (?key=a&key=b; none: all) posted to the "
            "app at /configuration/{store}/{key}",
            {
                200: "{id}",
                400: "unknown configuration store, or no app port to deliver to",
                500: "the store failed to subscribe",
            },
        ),
        Endpoint(
            ("GET",),
            f"/{version}/configuration/{{store}}/{{id}}/unsubscribe",
            api.unsubscribe_configuration,
            "Stop a configuration subscription",
            {
                200: "{ok: true}",
                400: "unknown configuration store",
                404: "{ok: false, errorCode, message}: no such subscription",
            },
        ),
        Endpoint(
            INVOKE_VERBS,
            "/v1.0/invoke/{app_id}/method/{method:path}",
            api.invoke,
            "Call a method of another app through its sidecar",
            {500: "ERR_DIRECT_INVOKE: the app id resolves nowhere or its sidecar is down"},
            "passed to the app as is; its status, headers and body come back unchanged",
        ),
    ]


def openapi_document(endpoints: list[Endpoint], *, public: set[Any]) -> dict[str, Any]:
    """OpenAPI 3.1, generated from the same table the routes are built from."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", endpoint.path)
        names = re.findall(r"\{(\w+)\}", path)
        for method in endpoint.methods:
            operation: dict[str, Any] = {
                "summary": endpoint.summary,
                "parameters": [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in names
                ],
                "responses": {
                    str(code): {"description": text}
                    for code, text in sorted(endpoint.responses.items())
                },
            }
            if endpoint.body is not None:
                operation["requestBody"] = {
                    "description": endpoint.body,
                    "content": {"*/*": {"schema": {}}},
                }
            if endpoint.handler not in public:
                operation["security"] = [{"daprApiToken": []}, {}]
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mechakit: Dapr HTTP API v1.0",
            "version": __version__,
            "description": "Errors are JSON {errorCode, message}; bodies over the size "
            "limit get 413.",
        },
        "components": {
            "securitySchemes": {
                "daprApiToken": {"type": "apiKey", "in": "header", "name": API_TOKEN_HEADER}
            }
        },
        "paths": paths,
    }
