"""The Dapr gRPC API (``dapr.proto.runtime.v1.Dapr``) over running components, on grpc.aio.

:func:`mechakit.runtime.grpc_server.start_server` serves what a Dapr sidecar answers on its gRPC port
for state, publish, streaming subscriptions (``SubscribeTopicEventsAlpha1``, see
:mod:`mechakit.runtime.streaming`), output bindings, secrets, locks, configuration (get,
subscribe, unsubscribe) and metadata, with the messages of the ``dapr`` package, so the
``dapr`` SDK's ``DaprClient`` works unchanged. ``mechakit run`` serves it next to the HTTP API. Every
other RPC of the service answers UNIMPLEMENTED naming the RPC.

Errors carry Dapr's status codes and, as Dapr does, a ``google.rpc.ErrorInfo`` detail
(domain ``dapr.io``) whose reason is the HTTP API's ``ERR_…`` code, so the SDK's
``DaprGrpcError.error_code()`` reads the same code as over HTTP. An unknown component is
INVALID_ARGUMENT, an ETag mismatch ABORTED, an invalid ETag INVALID_ARGUMENT, a secret
outside the Configuration's scopes PERMISSION_DENIED. Where Dapr says INTERNAL for what
the request got wrong, we say what the HTTP API says, for the same reason (see
:mod:`mechakit.runtime.http_api`): a missing secret is NOT_FOUND, a rejected request
INVALID_ARGUMENT, a transaction or query on a store without it UNIMPLEMENTED. A backend
failure the driver calls retriable is UNAVAILABLE, which the SDK's retry policy retries;
anything else is INTERNAL.

A call whose client cancels it, disconnects or whose deadline passes is cancelled where it
waits (grpc.aio cancels the handler's task), so it never reaches the backend after that.
Bulk calls of more than ``max_bulk_keys`` items are INVALID_ARGUMENT ``ERR_BULK_TOO_LARGE``;
allowed ones are worked through in chunks (:mod:`mechakit.runtime.bulk`).

State values are bytes on the wire. Bytes that are compact JSON (what ``encode_value``
writes) are stored as that JSON value, so HTTP reads, queries and in-process clients see
JSON; any other bytes are stored as they are. Either way a gRPC read returns the bytes
written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import (
    binding_pb2,
    configuration_pb2,
    dapr_pb2,
    invoke_pb2,
    lock_pb2,
    metadata_pb2,
    pubsub_pb2,
    secret_pb2,
    state_pb2,
)
from google.protobuf import any_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from mechakit.core.bindings import InvokeRequest
from mechakit.core.configuration import ConfigurationUpdate
from mechakit.core.errors import (
    InvalidRequestError,
)
from mechakit.core.pubsub import (
    BulkPublishEntry,
)
from mechakit.core.secretstores import GetSecretRequest
from mechakit.core.state import (
    Consistency,
    DeleteRequest,
    GetRequest,
)

from . import bulk
from . import grpc_codec as codec
from .in_process import Runtime
from .service import DaprError, Door, ErrorKind
from .streaming import TopicStreams

log = logging.getLogger("mechakit.grpc")

SERVICE = "dapr.proto.runtime.v1.Dapr"
API_TOKEN_METADATA = "dapr-api-token"
ERROR_DOMAIN = "dapr.io"
RAW_PAYLOAD = "rawPayload"
DEFAULT_STOP_GRACE = 2.0
_KEY_SEPARATOR = "||"
_STATUS_DETAILS = "grpc-status-details-bin"

Context = grpc.aio.ServicerContext[Any, Any]
ApiT = TypeVar("ApiT")
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
T = TypeVar("T")


class RpcFailure(Exception):
    """An error answer: the gRPC status code, the ``ErrorInfo`` reason (Dapr's ``DAPR_…``
    reason where its richer error model has one, else the legacy ``ERR_…`` code), a
    message, and the other ``google.rpc`` details (``ResourceInfo``, ``BadRequest``)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        details: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.metadata, self.details = dict(metadata or {}), list(details)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """``grpc-status-details-bin``: a ``google.rpc.Status`` with an ``ErrorInfo`` first,
        where the SDK's ``DaprGrpcError.error_code()`` reads the reason."""
        packed = []
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        for detail in (info, *self.details):
            entry = any_pb2.Any()
            entry.Pack(detail)
            packed.append(entry)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return ((_STATUS_DETAILS, status.SerializeToString()),)


GRPC_STATUS = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.ABORTED,
    ErrorKind.DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}
"""The gRPC status of each kind of service error (UNAVAILABLE is what the SDK retries)."""


def _rpc_failure(error: DaprError) -> RpcFailure:
    details: list[Any] = []
    if error.error_reason is not None and error.resource is not None:
        kind, name = error.resource
        details.append(error_details_pb2.ResourceInfo(resource_type=kind, resource_name=name))
    if error.error_reason is not None and error.violation is not None:
        field, description = error.violation
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field, description=description
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    return RpcFailure(
        GRPC_STATUS[error.kind],
        error.error_reason or error.code,
        error.message,
        metadata=error.info,
        details=details,
    )


async def _abort(context: Context, failure: RpcFailure) -> NoReturn:
    await context.abort(failure.code, failure.message, failure.trailing_metadata())


def _unary(
    method: Callable[[ApiT, RequestT, Context], Awaitable[ResponseT]],
) -> Callable[[ApiT, RequestT, Context], Awaitable[ResponseT]]:
    """Answer an ``RpcFailure`` with its status, anything unexpected with INTERNAL."""

    @functools.wraps(method)
    async def run(self: ApiT, request: RequestT, context: Context) -> ResponseT:
        try:
            try:
                return await method(self, request, context)
            except DaprError as exc:
                raise _rpc_failure(exc) from exc
        except asyncio.CancelledError:
            log.debug("%s: the caller cancelled, went away or ran out of time", method.__name__)
            raise
        except RpcFailure as exc:
            _log_failure(method.__name__, exc)
            await _abort(context, exc)
        except InvalidRequestError as exc:  # raised while reading the request, before any call
            await _abort(context, _invalid("ERR_MALFORMED_REQUEST", str(exc)))
        except Exception:
            log.exception("%s failed", method.__name__)
            await _abort(context, _internal())

    return run


def _stream(
    method: Callable[[ApiT, RequestT, Context], AsyncIterator[ResponseT]],
) -> Callable[[ApiT, RequestT, Context], AsyncIterator[ResponseT]]:
    """:func:`_unary` for server-streaming RPCs."""

    @functools.wraps(method)
    async def run(self: ApiT, request: RequestT, context: Context) -> AsyncIterator[ResponseT]:
        try:
            try:
                async for response in method(self, request, context):
                    yield response
            except DaprError as exc:
                raise _rpc_failure(exc) from exc
        except asyncio.CancelledError:
            log.debug("%s: the caller cancelled, went away or ran out of time", method.__name__)
            raise
        except RpcFailure as exc:
            _log_failure(method.__name__, exc)
            await _abort(context, exc)
        except Exception:
            log.exception("%s failed", method.__name__)
            await _abort(context, _internal())

    return run


def _log_failure(rpc: str, failure: RpcFailure) -> None:
    level = logging.WARNING if failure.code is grpc.StatusCode.INTERNAL else logging.DEBUG
    log.log(level, "%s: %s", rpc, failure.message)


def _internal() -> RpcFailure:
    return RpcFailure(
        grpc.StatusCode.INTERNAL, "ERR_INTERNAL", "internal error; see the runtime's log"
    )


class DaprGrpcApi(Door):
    """The ``Dapr`` service's handlers over a started ``runtime``.

    Register it with ``dapr_pb2_grpc.add_DaprServicer_to_server``; :func:`create_server`
    does that and adds the API token check.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        app_port: int | None = None,
        app_protocol: str = "http",
        max_bulk_keys: int = bulk.DEFAULT_MAX_BULK_KEYS,
    ) -> None:
        super().__init__(
            runtime, app_port=app_port, app_protocol=app_protocol, max_bulk_keys=max_bulk_keys
        )
        self._watches: dict[tuple[str, str], asyncio.Queue[ConfigurationUpdate | None]] = {}
        self.streams = TopicStreams(self.service.pubsub)

    def close(self) -> None:
        """End every configuration stream and streaming subscription, so that a server stop
        does not wait for them (what the subscriptions have not had answered is redelivered)."""
        for updates in self._watches.values():
            updates.put_nowait(None)
        self.streams.close()

    # --- state ---------------------------------------------------------------------------

    @_unary
    async def GetState(
        self, request: state_pb2.GetStateRequest, context: Context
    ) -> state_pb2.GetStateResponse:
        get = GetRequest(
            request.key,
            dict(request.metadata),
            consistency=codec.CONSISTENCY.get(request.consistency, Consistency.EVENTUAL),
        )
        item = await self.service.state.get(request.store_name, get)
        if item is None:
            return state_pb2.GetStateResponse()
        return state_pb2.GetStateResponse(
            data=codec.state_bytes(item.value), etag=item.etag or "", metadata=dict(item.metadata)
        )

    @_unary
    async def GetBulkState(
        self, request: state_pb2.GetBulkStateRequest, context: Context
    ) -> state_pb2.GetBulkStateResponse:
        name = request.store_name
        self.service.state.component(name)
        self.service.state.check_count(len(request.keys), "keys")
        metadata = dict(request.metadata)
        requests = await bulk.map_chunked(lambda _, k: GetRequest(k, metadata), request.keys)
        found = await self.service.state.bulk_get(name, requests)
        items = await bulk.map_chunked(lambda _, item: codec.bulk_item(item), found)
        return state_pb2.GetBulkStateResponse(items=items)

    @_unary
    async def SaveState(
        self, request: state_pb2.SaveStateRequest, context: Context
    ) -> empty_pb2.Empty:
        name = request.store_name
        self.service.state.component(name)
        self.service.state.check_count(len(request.states), "state items")
        requests = await bulk.map_chunked(lambda _, item: codec.set_request(item), request.states)
        await self.service.state.save(name, requests)
        return empty_pb2.Empty()

    @_unary
    async def DeleteState(
        self, request: state_pb2.DeleteStateRequest, context: Context
    ) -> empty_pb2.Empty:
        delete = DeleteRequest(
            request.key,
            etag=codec.etag(request, "etag"),
            metadata=dict(request.metadata),
            options=codec.options(request, "options"),
        )
        await self.service.state.delete(request.store_name, delete)
        return empty_pb2.Empty()

    @_unary
    async def DeleteBulkState(
        self, request: state_pb2.DeleteBulkStateRequest, context: Context
    ) -> empty_pb2.Empty:
        name = request.store_name
        self.service.state.component(name)
        self.service.state.check_count(len(request.states), "state items")
        requests = await bulk.map_chunked(
            lambda _, item: codec.delete_request(item), request.states
        )
        await self.service.state.bulk_delete(name, requests)
        return empty_pb2.Empty()

    @_unary
    async def ExecuteStateTransaction(
        self, request: state_pb2.ExecuteStateTransactionRequest, context: Context
    ) -> empty_pb2.Empty:
        name = request.storeName
        self.service.state.transactional(name)
        self.service.state.check_count(len(request.operations), "operations")
        operations = await bulk.map_chunked(codec.operation, request.operations)
        await self.service.state.transact(name, operations, dict(request.metadata))
        return empty_pb2.Empty()

    @_unary
    async def QueryStateAlpha1(
        self, request: state_pb2.QueryStateRequest, context: Context
    ) -> state_pb2.QueryStateResponse:
        name = request.store_name
        self.service.state.queryable(name)
        try:
            query = json.loads(request.query or "{}")
        except (ValueError, RecursionError) as exc:
            raise _invalid("ERR_MALFORMED_REQUEST", f"the query is not JSON: {exc}") from None
        if not isinstance(query, dict):
            raise _invalid("ERR_MALFORMED_REQUEST", "the query must be a JSON object")
        response = await self.service.state.query(name, query, dict(request.metadata))
        return state_pb2.QueryStateResponse(
            results=[
                state_pb2.QueryStateItem(
                    key=item.key,
                    data=codec.state_bytes(item.value),
                    etag=item.etag or "",
                    error=item.error or "",
                )
                for item in response.results
            ],
            token=response.token or "",
            metadata=dict(response.metadata),
        )

    # --- pub/sub -------------------------------------------------------------------------

    @_unary
    async def PublishEvent(
        self, request: pubsub_pb2.PublishEventRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.service.pubsub.publish(
            request.pubsub_name,
            request.topic,
            request.data,
            request.data_content_type or "text/plain",
            dict(request.metadata),
        )
        return empty_pb2.Empty()

    @_unary
    async def BulkPublishEvent(
        self, request: pubsub_pb2.BulkPublishRequest, context: Context
    ) -> pubsub_pb2.BulkPublishResponse:
        entries = [
            BulkPublishEntry(e.entry_id, e.event, e.content_type or "text/plain", dict(e.metadata))
            for e in request.entries
        ]
        result = await self.service.pubsub.bulk_publish(
            request.pubsub_name, request.topic, entries, dict(request.metadata)
        )
        return pubsub_pb2.BulkPublishResponse(
            failedEntries=[
                pubsub_pb2.BulkPublishResponseFailedEntry(entry_id=f.entry_id, error=f.error)
                for f in result.failed
            ]
        )

    BulkPublishEventAlpha1 = BulkPublishEvent

    @_stream
    async def SubscribeTopicEventsAlpha1(
        self,
        requests: AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1],
        context: Context,
    ) -> AsyncIterator[pubsub_pb2.SubscribeTopicEventsResponseAlpha1]:
        async for response in self.streams.serve(requests):
            yield response

    # --- bindings ------------------------------------------------------------------------

    @_unary
    async def InvokeBinding(
        self, request: binding_pb2.InvokeBindingRequest, context: Context
    ) -> binding_pb2.InvokeBindingResponse:
        invoke = InvokeRequest(request.operation, request.data, dict(request.metadata))
        result = await self.service.bindings.invoke(request.name, invoke)
        return binding_pb2.InvokeBindingResponse(
            data=result.data or b"", metadata=dict(result.metadata)
        )

    # --- secrets -------------------------------------------------------------------------

    @_unary
    async def GetSecret(
        self, request: secret_pb2.GetSecretRequest, context: Context
    ) -> secret_pb2.GetSecretResponse:
        secret = GetSecretRequest(request.key, dict(request.metadata))
        values = await self.service.secrets.get(request.store_name, secret)
        return secret_pb2.GetSecretResponse(data=values)

    @_unary
    async def GetBulkSecret(
        self, request: secret_pb2.GetBulkSecretRequest, context: Context
    ) -> secret_pb2.GetBulkSecretResponse:
        found = await self.service.secrets.bulk_get(request.store_name, dict(request.metadata))
        return secret_pb2.GetBulkSecretResponse(
            data={name: secret_pb2.SecretResponse(secrets=values) for name, values in found.items()}
        )

    # --- locks ---------------------------------------------------------------------------

    @_unary
    async def TryLockAlpha1(
        self, request: lock_pb2.TryLockRequest, context: Context
    ) -> lock_pb2.TryLockResponse:
        success = await self.service.lock.try_lock(
            request.store_name, request.resource_id, request.lock_owner, request.expiry_in_seconds
        )
        return lock_pb2.TryLockResponse(success=success)

    @_unary
    async def UnlockAlpha1(
        self, request: lock_pb2.UnlockRequest, context: Context
    ) -> lock_pb2.UnlockResponse:
        status = await self.service.lock.unlock(
            request.store_name, request.resource_id, request.lock_owner
        )
        return lock_pb2.UnlockResponse(status=int(status))  # type: ignore[arg-type]

    # --- configuration -------------------------------------------------------------------

    @_unary
    async def GetConfiguration(
        self, request: configuration_pb2.GetConfigurationRequest, context: Context
    ) -> configuration_pb2.GetConfigurationResponse:
        items = await self.service.configuration.get(
            request.store_name, list(request.keys), dict(request.metadata)
        )
        return configuration_pb2.GetConfigurationResponse(items=codec.configuration_items(items))

    GetConfigurationAlpha1 = GetConfiguration

    @_stream
    async def SubscribeConfiguration(
        self, request: configuration_pb2.SubscribeConfigurationRequest, context: Context
    ) -> AsyncIterator[configuration_pb2.SubscribeConfigurationResponse]:
        """The first message carries only the subscription id; then one per change."""
        name = request.store_name
        updates: asyncio.Queue[ConfigurationUpdate | None] = asyncio.Queue()

        async def handler(update: ConfigurationUpdate) -> None:
            updates.put_nowait(update)

        configuration = self.service.configuration
        subscription_id = await configuration.subscribe(
            name, list(request.keys), handler, dict(request.metadata)
        )
        watch = (name, subscription_id)
        self._watches[watch] = updates
        try:
            yield configuration_pb2.SubscribeConfigurationResponse(id=subscription_id)
            while (update := await updates.get()) is not None:
                yield configuration_pb2.SubscribeConfigurationResponse(
                    id=subscription_id, items=codec.configuration_items(update.items)
                )
        finally:
            if self._watches.pop(watch, None) is not None:
                with contextlib.suppress(Exception):
                    await configuration.unsubscribe(name, subscription_id, missing_ok=True)

    SubscribeConfigurationAlpha1 = SubscribeConfiguration

    @_unary
    async def UnsubscribeConfiguration(
        self, request: configuration_pb2.UnsubscribeConfigurationRequest, context: Context
    ) -> configuration_pb2.UnsubscribeConfigurationResponse:
        """Stop a subscription and end its stream; an unknown id is ``ok=False``."""
        name = request.store_name
        self.service.configuration.component(name)
        updates = self._watches.pop((name, request.id), None)
        if updates is None:
            return configuration_pb2.UnsubscribeConfigurationResponse(
                ok=False,
                message=f"no subscription {request.id!r} in configuration store {name}",
            )
        try:
            await self.service.configuration.unsubscribe(name, request.id, missing_ok=True)
        finally:
            updates.put_nowait(None)
        return configuration_pb2.UnsubscribeConfigurationResponse(ok=True)

    UnsubscribeConfigurationAlpha1 = UnsubscribeConfiguration

    # --- metadata ------------------------------------------------------------------------

    @_unary
    # --- service invocation ----------------------------------------------------------------

    @_unary
    async def InvokeService(
        self, request: invoke_pb2.InvokeServiceRequest, context: Context
    ) -> common_pb2.InvokeResponse:
        from .service.invocation import grpc_code_of, grpc_invocation, read_body

        invoker = self.runtime.invoker
        if invoker is None:
            raise DaprError(
                ErrorKind.INTERNAL, "ERR_DIRECT_INVOKE", "service invocation needs 'mechakit run'"
            )
        invocation = grpc_invocation(request.message, context.invocation_metadata())
        reply = await invoker.invoke(request.id, invocation)
        body = await read_body(reply.body)
        if not 200 <= reply.status < 300:
            message = body.decode("utf-8", "replace") or f"HTTP {reply.status}"
            code = grpc_code_of(reply)
            raise RpcFailure(code, "ERR_DIRECT_INVOKE", message)
        data = any_pb2.Any(value=body)
        return common_pb2.InvokeResponse(data=data, content_type=reply.content_type)

    async def GetMetadata(
        self, request: metadata_pb2.GetMetadataRequest, context: Context
    ) -> metadata_pb2.GetMetadataResponse:
        found = self.service.metadata.describe(app=self.app_connection())
        response = metadata_pb2.GetMetadataResponse(
            id=found.app_id,
            runtime_version=found.runtime_version,
            registered_components=[
                metadata_pb2.RegisteredComponents(
                    name=c.name, type=c.type, version=c.version, capabilities=c.capabilities
                )
                for c in found.components
            ],
            subscriptions=[codec.subscription(s) for s in found.subscriptions],
            extended_metadata=found.extended,
        )
        if found.app is not None:
            response.app_connection_properties.CopyFrom(
                metadata_pb2.AppConnectionProperties(
                    port=found.app.port,
                    protocol=found.app.protocol,
                    channel_address=found.app.address,
                )
            )
        return response

    @_unary
    async def SetMetadata(
        self, request: metadata_pb2.SetMetadataRequest, context: Context
    ) -> empty_pb2.Empty:
        self.service.metadata.set(request.key, request.value)
        return empty_pb2.Empty()


def _unimplemented(rpc: str) -> Callable[[Any, Any, Context], Awaitable[None]]:
    async def answer(self: Any, request: Any, context: Context) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"mechakit does not implement the Dapr gRPC method {SERVICE}/{rpc}; it serves "
            f"{', '.join(IMPLEMENTED)}",
        )

    answer.__name__ = rpc
    return answer


RPCS: tuple[str, ...] = tuple(
    method.name for method in dapr_pb2.DESCRIPTOR.services_by_name["Dapr"].methods
)
"""Every RPC of ``dapr.proto.runtime.v1.Dapr`` in the installed ``dapr`` package."""

IMPLEMENTED: tuple[str, ...] = tuple(name for name in RPCS if name in vars(DaprGrpcApi))

for _rpc in RPCS:
    if _rpc not in vars(DaprGrpcApi):
        setattr(DaprGrpcApi, _rpc, _unimplemented(_rpc))


def _invalid(reason: str, message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


__all__ = ["IMPLEMENTED", "RPCS", "DaprGrpcApi", "RpcFailure"]
