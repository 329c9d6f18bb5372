"""``bindings.aws.s3``: objects in one S3 bucket, as Dapr's S3 output binding.

Operations (request metadata in brackets; ``decodeBase64``/``encodeBase64`` in a request
override the component's):

- ``create`` [``key``, ``decodeBase64``, ``contentType``, ``storageClass``, ``presignTTL``]:
  uploads the data under ``key`` (a UUID when absent). The response body is Dapr's
  ``{"location", "versionID", "presignURL"}`` (the last with ``presignTTL`` only); the
  response metadata has ``key``, ``location``, ``etag`` and those that are set.
- ``get`` [``key``, ``encodeBase64``]: the object's bytes; a missing object is
  ``NotFoundError``.
- ``delete`` [``key``]: removes the object (a missing one is not an error, as in S3).
- ``list`` [``prefix``, ``maxResults``, ``marker``, ``delimiter``, also accepted as a JSON
  object in the request data; metadata wins]: one page of ``ListObjects`` as JSON
  (``Contents``, ``CommonPrefixes``, ``IsTruncated``, ``NextMarker`` …). ``NextMarker`` is
  always set when more pages follow; pass it back as ``marker``. The response metadata
  repeats ``isTruncated`` and ``nextMarker``.
- ``presign`` [``key``, ``presignTTL``]: a URL that GETs the object without credentials
  for ``presignTTL`` (a duration such as ``15m``, at most 7 days), in the body
  ``{"presignURL"}`` and in the response metadata ``presignURL``. The object need not
  exist yet; presigning is local and costs no request.

``init`` checks the bucket exists (``HeadBucket``); without permission to check it only
logs a warning. botocore retries a request whose answer was lost; that is safe here, as a
repeated ``PutObject`` (same key, chosen once, and body) or ``DeleteObject`` changes nothing
more, and a request left without an answer is a retriable error saying so.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from mechakit.components._shared import aws
from mechakit.components._shared.aws import AwsDriver, AwsFailure, AwsSettings
from mechakit.components._shared.requests import metadata_value
from mechakit.components.bindings._storage import StorageBinding, json_response
from mechakit.core.bindings import InvokeRequest, InvokeResponse
from mechakit.core.errors import (
    InvalidRequestError,
    MechakitError,
    MetadataError,
    NotFoundError,
    PermissionDeniedError,
)
from mechakit.core.metadata import Bool, parse_duration, setting

_PRESIGN = "presign"


class S3Settings(AwsSettings):
    ignored_metadata = frozenset({"direction", "route"})

    bucket: str = setting(
        description="Name of the S3 bucket the binding works on.", example="mybucket"
    )
    force_path_style: Bool = setting(
        False,
        description="Address the bucket in the URL path (endpoint/bucket/key), e.g. for emulators.",
    )
    decode_base64: Bool = setting(
        False,
        description="create: the request data is base64; store it decoded.",
    )
    encode_base64: Bool = setting(
        False, description="get: return the object's bytes base64-encoded."
    )
    storage_class: str = setting(
        "",
        description="Storage class of created objects; default the bucket's.",
        example="STANDARD_IA",
    )


class S3Binding(AwsDriver[S3Settings], StorageBinding[S3Settings]):
    """Create, get, delete, list and presign objects of one bucket."""

    SERVICE = "s3"
    EXTRA_OPERATIONS = (_PRESIGN,)

    async def open(self) -> None:
        if not self.settings.bucket.strip():
            raise MetadataError(
                "metadata 'bucket' must not be empty", component=self.label, field="bucket"
            )
        await super().open()
        await self._check_bucket()

    def client_config(self) -> Mapping[str, Any]:
        addressing = "path" if self.settings.force_path_style else "auto"
        return {"s3": {"addressing_style": addressing}, "signature_version": "s3v4"}

    async def ping(self) -> None:
        await self._call("ping", self._aws.head_bucket, Bucket=self._bucket)

    async def create_object(self, request: InvokeRequest) -> InvokeResponse:
        key = metadata_value(request.metadata, "key") or str(uuid.uuid4())
        data = self.data_to_store(request, key, decode=self.settings.decode_base64)
        ttl = self._presign_ttl(request.metadata, required=False)
        options: dict[str, Any] = {}
        content_type = metadata_value(request.metadata, "contentType")
        if content_type:
            options["ContentType"] = content_type
        storage_class = (
            metadata_value(request.metadata, "storageClass") or self.settings.storage_class
        )
        if storage_class:
            options["StorageClass"] = storage_class
        reply = await self._call(
            "create",
            self._aws.put_object,
            key=key,
            Bucket=self._bucket,
            Key=key,
            Body=data,
            **options,
        )
        body = {"location": self._location(key), "versionID": reply.get("VersionId")}
        metadata = {"key": key, "location": body["location"], "etag": str(reply.get("ETag", ""))}
        if reply.get("VersionId"):
            metadata["versionID"] = str(reply["VersionId"])
        if ttl is not None:
            body["presignURL"] = metadata["presignURL"] = await self._presigned_url(key, ttl)
        return json_response(body, metadata)

    async def get_object(self, request: InvokeRequest) -> InvokeResponse:
        key = self.required_option(request, "key")
        data, content_type = await self._call(
            "get", _read_object, self._aws, self._bucket, key, key=key
        )
        data = self.data_to_return(request, data, encode=self.settings.encode_base64)
        return InvokeResponse(data=data, metadata={"key": key}, content_type=content_type)

    async def delete_object(self, request: InvokeRequest) -> InvokeResponse:
        key = self.required_option(request, "key")
        await self._call("delete", self._aws.delete_object, key=key, Bucket=self._bucket, Key=key)
        return InvokeResponse(metadata={"key": key})

    async def list_objects(self, request: InvokeRequest) -> InvokeResponse:
        options = self._list_options(request)
        page = await self._call("list", self._aws.list_objects, Bucket=self._bucket, **options)
        contents = [
            {
                "Key": item["Key"],
                "Size": item.get("Size"),
                "LastModified": _iso(item.get("LastModified")),
                "ETag": item.get("ETag"),
                "StorageClass": item.get("StorageClass"),
            }
            for item in page.get("Contents", [])
        ]
        prefixes = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        truncated = bool(page.get("IsTruncated"))
        next_marker = page.get("NextMarker") or ""
        if truncated and not next_marker:
            next_marker = max([c["Key"] for c in contents] + prefixes, default="")
        body = {
            "Contents": contents,
            "CommonPrefixes": prefixes,
            "IsTruncated": truncated,
            "NextMarker": next_marker or None,
            "Marker": page.get("Marker") or None,
            "MaxKeys": page.get("MaxKeys"),
            "Prefix": page.get("Prefix") or None,
            "Delimiter": page.get("Delimiter") or None,
            "Name": page.get("Name"),
        }
        metadata = {"isTruncated": "true" if truncated else "false"}
        if next_marker:
            metadata["nextMarker"] = next_marker
        return json_response(body, metadata)

    async def invoke_extra(self, operation: str, request: InvokeRequest) -> InvokeResponse:
        """``presign``, the one operation beyond Dapr's storage four."""
        key = self.required_option(request, "key")
        ttl = self._presign_ttl(request.metadata, required=True)
        assert ttl is not None
        url = await self._presigned_url(key, ttl)
        return json_response({"presignURL": url}, {"key": key, "presignURL": url})

    # --- helpers ------------------------------------------------------------------------

    @property
    def _bucket(self) -> str:
        return self.settings.bucket

    async def _call(
        self, action: str, fn: Any, *args: Any, key: str | None = None, **kwargs: Any
    ) -> Any:
        def no_bucket(failure: AwsFailure) -> MechakitError:
            return MetadataError(
                f"metadata 'bucket': bucket {self._bucket!r} does not exist",
                component=self.label,
                field="bucket",
            )

        def no_key(failure: AwsFailure) -> MechakitError:
            return NotFoundError(f"object {key!r} not found", component=self.label, key=key)

        errors = {"NoSuchBucket": no_bucket, "NoSuchKey": no_key}
        if key is None:
            errors["404"] = no_bucket  # HeadBucket has no body, so no code but the status
        return await aws.call(
            fn, *args, component=self.label, action=action, key=key, errors=errors, **kwargs
        )

    async def _presigned_url(self, key: str, ttl: timedelta) -> str:
        url: str = await self._call(
            "presign",
            self._aws.generate_presigned_url,
            "get_object",
            key=key,
            Params={"Bucket": self._bucket, "Key": key},
            ExpiresIn=int(ttl.total_seconds()),
        )
        return url

    def _location(self, key: str) -> str:
        """The object's URL, in the addressing style the client uses."""
        parts = urlsplit(str(self._aws.meta.endpoint_url))
        path = quote(key, safe="/~")
        if self.settings.force_path_style:
            return urlunsplit((parts.scheme, parts.netloc, f"/{self._bucket}/{path}", "", ""))
        return urlunsplit((parts.scheme, f"{self._bucket}.{parts.netloc}", f"/{path}", "", ""))

    def _presign_ttl(self, metadata: Mapping[str, str], *, required: bool) -> timedelta | None:
        raw = metadata_value(metadata, "presignTTL")
        if not raw:
            if required:
                raise InvalidRequestError(
                    "operation 'presign' needs metadata 'presignTTL' (e.g. 15m)",
                    component=self.label,
                    field="presignTTL",
                )
            return None
        try:
            ttl = parse_duration(raw)
        except ValueError as exc:
            raise InvalidRequestError(
                f"metadata 'presignTTL': {exc}", component=self.label, field="presignTTL"
            ) from None
        if not timedelta(seconds=1) <= ttl <= _MAX_PRESIGN_TTL:
            raise InvalidRequestError(
                f"metadata 'presignTTL' must be between 1s and 7 days, got {raw!r}",
                component=self.label,
                field="presignTTL",
            )
        return ttl

    def _list_options(self, request: InvokeRequest) -> dict[str, Any]:
        given = self.list_options(
            request,
            ("prefix", "maxResults", "marker", "delimiter"),
            example='{"prefix": "logs/", "maxResults": 10, "marker": "logs/9"}',
        )
        options: dict[str, Any] = {}
        for name, boto_name in (
            ("prefix", "Prefix"),
            ("marker", "Marker"),
            ("delimiter", "Delimiter"),
        ):
            if given.get(name):
                options[boto_name] = str(given[name])
        if "maxResults" in given:
            options["MaxKeys"] = given["maxResults"]
        return options

    async def _check_bucket(self) -> None:
        try:
            await self._call("check bucket", self._aws.head_bucket, Bucket=self._bucket)
        except PermissionDeniedError as exc:
            self.log.warning(
                "%s: cannot check bucket %r (%s)", self.label, self._bucket, exc.reason
            )


def _read_object(client: Any, bucket: str, key: str) -> tuple[bytes, str | None]:
    """The whole body, read in the worker thread, and its content type."""
    reply = client.get_object(Bucket=bucket, Key=key)
    with reply["Body"] as body:
        data = body.read()
    return bytes(data), reply.get("ContentType")


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


_MAX_PRESIGN_TTL = timedelta(days=7)

__all__ = ["S3Binding", "S3Settings"]
