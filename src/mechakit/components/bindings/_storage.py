"""What the bindings over named objects share (``bindings.localstorage``, ``bindings.aws.s3``).

Dapr's storage bindings all offer ``create``, ``get``, ``delete`` and ``list``, read the
same request options (``decodeBase64`` on create, ``encodeBase64`` on get, ``prefix`` and
``maxResults`` on list, given as metadata or as a JSON object in the list request's data)
and word their errors alike; :class:`StorageBinding` holds that once.
"""

from __future__ import annotations

import base64
import binascii
import json
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from mechakit.components._shared.requests import metadata_flag, metadata_value
from mechakit.core.bindings import InvokeRequest, InvokeResponse, OperationKind, OutputBinding
from mechakit.core.component import SettingsT
from mechakit.core.errors import InvalidRequestError

STORAGE_OPERATIONS = (
    OperationKind.CREATE,
    OperationKind.GET,
    OperationKind.DELETE,
    OperationKind.LIST,
)


class StorageBinding(OutputBinding[SettingsT]):
    """An output binding over named objects: ``create``, ``get``, ``delete`` and ``list``
    go to the ``*_object(s)`` methods; a binding with more operations names them in
    ``EXTRA_OPERATIONS`` and handles them in :meth:`invoke_extra`."""

    EXTRA_OPERATIONS: ClassVar[tuple[str, ...]] = ()
    OBJECT: ClassVar[str] = "object"
    """What an object is called in errors (``file``, ``object``)."""

    def operations(self) -> Sequence[str]:
        return (*STORAGE_OPERATIONS, *self.EXTRA_OPERATIONS)

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        operation = self.check_operation(request)
        if operation == OperationKind.CREATE:
            return await self.create_object(request)
        if operation == OperationKind.GET:
            return await self.get_object(request)
        if operation == OperationKind.DELETE:
            return await self.delete_object(request)
        if operation == OperationKind.LIST:
            return await self.list_objects(request)
        return await self.invoke_extra(operation, request)

    @abstractmethod
    async def create_object(self, request: InvokeRequest) -> InvokeResponse: ...

    @abstractmethod
    async def get_object(self, request: InvokeRequest) -> InvokeResponse: ...

    @abstractmethod
    async def delete_object(self, request: InvokeRequest) -> InvokeResponse: ...

    @abstractmethod
    async def list_objects(self, request: InvokeRequest) -> InvokeResponse: ...

    async def invoke_extra(self, operation: str, request: InvokeRequest) -> InvokeResponse:
        """One of ``EXTRA_OPERATIONS`` (``check_operation`` let no other through)."""
        raise NotImplementedError(operation)

    # --- request options ------------------------------------------------------------------

    def required_option(self, request: InvokeRequest, name: str) -> str:
        """The request metadata ``name`` that the operation cannot do without."""
        value = metadata_value(request.metadata, name)
        if not value:
            raise InvalidRequestError(
                f"operation {request.operation!r} needs metadata {name!r}",
                component=self.label,
                field=name,
            )
        return value

    def flag(self, request: InvokeRequest, name: str, *, default: bool = False) -> bool:
        """A boolean request option (``decodeBase64``), ``default`` when not given."""
        value = metadata_value(request.metadata, name)
        return metadata_flag(value, name, default=default, component=self.label)

    def data_to_store(self, request: InvokeRequest, name: str, *, decode: bool) -> bytes:
        """The data of a create request, base64-decoded when ``decodeBase64`` (default
        ``decode``) says so; ``name`` is the object's, for the error."""
        if not self.flag(request, "decodeBase64", default=decode):
            return request.data
        try:
            return base64.b64decode(request.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError(
                f"data of {self.OBJECT} {name!r} is not valid base64 (decodeBase64=true)",
                component=self.label,
                field="data",
                key=name,
            ) from None

    def data_to_return(self, request: InvokeRequest, data: bytes, *, encode: bool) -> bytes:
        """The bytes a get request returns, base64-encoded when ``encodeBase64`` (default
        ``encode``) says so."""
        return (
            base64.b64encode(data) if self.flag(request, "encodeBase64", default=encode) else data
        )

    def list_options(
        self, request: InvokeRequest, names: Sequence[str], *, example: str
    ) -> dict[str, Any]:
        """The options ``names`` of a list request: a JSON object in the data (``example``
        shows one), each overridden by request metadata of that name; ``maxResults`` is
        returned as a positive ``int`` (absent when not given)."""
        options: dict[str, Any] = {}
        if request.data.strip():
            try:
                parsed = json.loads(request.data)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise InvalidRequestError(
                    f"list data must be empty or a JSON object such as {example}",
                    component=self.label,
                    field="data",
                )
            options.update(parsed)
        for name in names:
            if value := metadata_value(request.metadata, name):
                options[name] = value
        limit = options.pop("maxResults", None)
        if limit is not None and limit != "":
            options["maxResults"] = self._max_results(limit)
        return options

    def _max_results(self, value: object) -> int:
        try:
            limit = int(str(value))
        except ValueError:
            limit = 0
        if limit <= 0:
            raise InvalidRequestError(
                f"maxResults must be a positive whole number, got {value!r}",
                component=self.label,
                field="maxResults",
            )
        return limit


def json_response(body: object, metadata: dict[str, str] | None = None) -> InvokeResponse:
    """A response whose data is ``body`` as JSON."""
    return InvokeResponse(
        data=json.dumps(body).encode(), metadata=metadata or {}, content_type="application/json"
    )


__all__ = ["STORAGE_OPERATIONS", "StorageBinding", "json_response"]
