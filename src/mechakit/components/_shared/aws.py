"""Connection settings, client factory and error mapping shared by every AWS driver.

A driver subclasses :class:`AwsSettings` for its settings model and :class:`AwsDriver`
(which builds its boto3 client with :func:`client` in ``open`` and closes it in ``shut``),
and sends every request through :func:`call`, so that all AWS components agree on metadata
names, credentials and which failures are retriable.

boto3 blocks, so :func:`client` and :func:`call` run it in a worker thread and never on
the event loop. boto3 and botocore are imported only when a client is made, never when
this module is imported.

Credentials: ``accessKey`` and ``secretKey`` (and ``sessionToken`` for temporary keys)
when given; otherwise boto3's default chain (``AWS_ACCESS_KEY_ID``…, the ``profile``
or the default one in ``~/.aws``, container and instance roles). :func:`client` resolves
them at once, so a component without any fails in ``init`` naming ``accessKey``.

Errors: :func:`call` turns what boto3 raises into core errors. Unreachable endpoints and
timeouts are ``ConnectionFailedError`` (retriable), throttling is :class:`ThrottledError`
(retriable), refused credentials are ``MetadataError`` on ``accessKey``, access denied is
``PermissionDeniedError``. Service error codes that mean something to one driver
(``ConditionalCheckFailedException``, ``NoSuchKey``…) are mapped by the caller through
``errors={code: factory}``; any other service error is a ``ComponentError`` quoting the
code and AWS's message.

Retries: botocore's "standard" mode retries every call (``_MAX_ATTEMPTS``) after connection
errors, read timeouts, 5xx and throttling, re-sending the same request (same parameters,
same idempotency tokens such as TransactWriteItems' ``ClientRequestToken``). An attempt may
have been applied though its answer was lost (timeout, dropped connection, 5xx): the client
notes that, :func:`retried_after_lost_answer` tells a driver whose retry then failed (e.g. a
condition that found its own write), and errors after such an attempt say the request may
or may not have happened (retriable), instead of a definite answer that may be false.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from mechakit.core.component import Component
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MechakitError,
    MetadataError,
    MissingDependencyError,
    OperationTimeoutError,
    PermissionDeniedError,
)
from mechakit.core.metadata import Sensitive, Settings, setting


class AwsSettings(Settings):
    """Dapr's common AWS metadata: region, endpoint and static or default-chain credentials."""

    region: str = setting(
        "",
        aliases=("awsRegion",),
        description="AWS region; default: AWS_REGION, AWS_DEFAULT_REGION or the profile's region.",
        example="us-east-1",
    )
    endpoint: str = setting(
        "",
        aliases=("awsEndpoint",),
        description="Endpoint URL instead of AWS's own, e.g. a local emulator (moto, LocalStack).",
        example="http://localhost:4566",
    )
    access_key: Sensitive = setting(
        Sensitive(""),
        aliases=("awsAccessKey",),
        description="Access key id; without it the default credential chain is used.",
    )
    secret_key: Sensitive = setting(
        Sensitive(""),
        aliases=("awsSecretKey",),
        description="Secret access key belonging to accessKey.",
    )
    session_token: Sensitive = setting(
        Sensitive(""),
        aliases=("awsSessionToken",),
        description="Session token of temporary credentials (with accessKey and secretKey).",
    )
    profile: str = setting(
        "",
        description="Named profile of the shared AWS config files, for the default chain.",
        example="dev",
    )


AwsSettingsT = TypeVar("AwsSettingsT", bound=AwsSettings)


class AwsDriver(Component[AwsSettingsT]):
    """Base of a driver over one boto3 client of ``SERVICE``: ``open`` makes it, ``shut``
    closes it and ``_aws`` hands it out while the component is open.

    A driver that checks more in ``open`` (its bucket, its table) calls ``super().open()``
    first, or validates its settings and then calls it.
    """

    SERVICE: ClassVar[str]
    """The boto3 service name (``"s3"``, ``"dynamodb"``…)."""

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None

    async def open(self) -> None:
        self._client = await client(
            self.settings, self.SERVICE, component=self.label, config=self.client_config()
        )

    async def shut(self) -> None:
        made, self._client = self._client, None
        if made is not None:
            await asyncio.to_thread(made.close)

    def client_config(self) -> Mapping[str, Any] | None:
        """Extra ``botocore.config.Config`` arguments for this driver's client."""
        return None

    @property
    def _aws(self) -> Any:
        """The client ``open`` made; ``ComponentNotOpenError`` when the component is not open."""
        return self.opened(self._client)


class ThrottledError(ComponentError):
    """AWS refused the request for its rate or capacity; retrying later may succeed."""

    retriable = True


@dataclass(frozen=True)
class AwsFailure:
    """A service's error reply, as a driver's ``errors`` factories see it."""

    code: str
    message: str
    status: int | None
    response: Mapping[str, Any] = field(default_factory=dict)
    """The whole parsed reply, e.g. DynamoDB's ``CancellationReasons``."""

    @property
    def after_lost_answer(self) -> bool:
        """An earlier attempt of this call may have been applied (see
        :func:`retried_after_lost_answer`)."""
        return bool((self.response.get("ResponseMetadata") or {}).get(_LOST_ANSWER))


ErrorFactory = Callable[[AwsFailure], MechakitError]

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "BandwidthLimitExceeded",
        "TransactionInProgressException",
    }
)
_REFUSED_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "AuthFailure",
    }
)
_ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "Forbidden", "403"})


def import_boto3(component: str) -> Any:
    """The ``boto3`` module, or ``MissingDependencyError`` saying which extra to install."""
    try:
        import boto3
    except ImportError:
        raise MissingDependencyError(
            "needs boto3: pip install 'mechakit[aws]'", component=component
        ) from None
    return boto3


async def client(
    settings: AwsSettings,
    service: str,
    *,
    component: str,
    config: Mapping[str, Any] | None = None,
) -> Any:
    """A boto3 client of ``service`` with the settings' region, endpoint and credentials.

    Made in a worker thread (boto3 reads its service models from disk). Fails here, not at
    the first request, when no region or no credentials can be found. ``config`` holds
    extra ``botocore.config.Config`` arguments (e.g. ``{"s3": {"addressing_style": "path"}}``).
    """
    _check_key_pairs(settings, component)
    boto3 = import_boto3(component)
    return await asyncio.to_thread(_make_client, boto3, settings, service, component, config)


def _check_key_pairs(settings: AwsSettings, component: str) -> None:
    access = bool(settings.access_key.get_secret_value())
    secret = bool(settings.secret_key.get_secret_value())
    missing = None
    if access and not secret:
        missing, reason = "secretKey", "is required when 'accessKey' is set"
    elif secret and not access:
        missing, reason = "accessKey", "is required when 'secretKey' is set"
    elif settings.session_token.get_secret_value() and not access:
        missing, reason = "accessKey", "and 'secretKey' are required when 'sessionToken' is set"
    if missing is not None:
        raise MetadataError(f"metadata {missing!r} {reason}", component=component, field=missing)


def _make_client(
    boto3: Any,
    settings: AwsSettings,
    service: str,
    component: str,
    config: Mapping[str, Any] | None,
) -> Any:
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, NoRegionError, ProfileNotFound

    access_key = settings.access_key.get_secret_value()
    try:
        session = boto3.session.Session(
            botocore_session=_botocore_session(),
            aws_access_key_id=access_key or None,
            aws_secret_access_key=settings.secret_key.get_secret_value() or None,
            aws_session_token=settings.session_token.get_secret_value() or None,
            region_name=settings.region or None,
            profile_name=settings.profile or None,
        )
    except ProfileNotFound:
        raise MetadataError(
            f"metadata 'profile': no profile {settings.profile!r} in the AWS config files",
            component=component,
            field="profile",
        ) from None
    options: dict[str, Any] = {
        "connect_timeout": _CONNECT_TIMEOUT,
        "read_timeout": _READ_TIMEOUT,
        "retries": {"mode": "standard", "max_attempts": _MAX_ATTEMPTS},
        "max_pool_connections": _POOL_SIZE,
        "user_agent_extra": "mechakit",
        **(config or {}),
    }
    try:
        made = session.client(
            service, endpoint_url=settings.endpoint or None, config=Config(**options)
        )
    except NoRegionError:
        raise MetadataError(
            "metadata 'region' is required (e.g. us-east-1) unless AWS_REGION or the "
            "profile names one",
            component=component,
            field="region",
        ) from None
    except ValueError as exc:
        raise MetadataError(
            f"metadata 'endpoint' is invalid: {exc}", component=component, field="endpoint"
        ) from None
    _note_lost_answers(made)
    if not access_key:
        try:
            credentials = session.get_credentials()
        except BotoCoreError as exc:
            raise MetadataError(
                f"no usable AWS credentials from the default chain: {exc}",
                component=component,
                field="accessKey",
            ) from None
        if credentials is None:
            raise MetadataError(
                "no AWS credentials: set metadata 'accessKey' and 'secretKey', or provide "
                "them through the default chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "a profile in ~/.aws, or a container or instance role)",
                component=component,
                field="accessKey",
            )
    return made


def _botocore_session() -> Any:
    """A fresh botocore session sharing one model loader, so that a client takes
    milliseconds instead of re-reading its service's JSON models every time."""
    import botocore.loaders
    import botocore.session

    global _LOADER
    if _LOADER is None:
        _LOADER = botocore.loaders.create_loader()
    session = botocore.session.Session()
    session.register_component("data_loader", _LOADER)
    return session


def _note_lost_answers(made: Any) -> None:
    """Mark a call once one of its attempts may have been applied without an answer, so that
    its final reply or error carries the mark (``after-call`` / ``after-call-error``)."""
    service = made.meta.service_model.service_id.hyphenize()
    events = made.meta.events
    events.register(f"needs-retry.{service}", _note_attempt)
    events.register(f"after-call.{service}", _mark_reply)
    events.register(f"after-call-error.{service}", _mark_exception)


def _note_attempt(
    request_dict: Mapping[str, Any],
    response: Any = None,
    caught_exception: BaseException | None = None,
    **_: Any,
) -> None:
    """needs-retry handler: note attempts that may have been applied; never decides retries."""
    if attempt_maybe_applied(response, caught_exception):
        request_dict["context"][_LOST_ANSWER] = True


def attempt_maybe_applied(response: Any, caught_exception: BaseException | None) -> bool:
    """Whether one attempt may have been applied: anything but a refusal (4xx) or a failure
    to connect, which are sure to have changed nothing."""
    from botocore import exceptions as boto

    if caught_exception is not None:
        not_sent = (
            boto.EndpointConnectionError | boto.ConnectTimeoutError | boto.ProxyConnectionError
        )
        return not isinstance(caught_exception, not_sent)
    http = response[0] if isinstance(response, tuple) and response else None
    status = getattr(http, "status_code", None)
    return not (isinstance(status, int) and 400 <= status < 500)


def _mark_reply(parsed: Any, context: Mapping[str, Any], **_: Any) -> None:
    if context.get(_LOST_ANSWER) and isinstance(parsed, dict):
        parsed.setdefault("ResponseMetadata", {})[_LOST_ANSWER] = True


def _mark_exception(exception: BaseException, context: Mapping[str, Any], **_: Any) -> None:
    if context.get(_LOST_ANSWER):
        setattr(exception, _LOST_ANSWER, True)


def retried_after_lost_answer(exc: BaseException | AwsFailure) -> bool:
    """Whether an earlier attempt of the failed call may have been applied without an
    answer, so the final error (e.g. a failed condition) may be about the call's own effect."""
    if isinstance(exc, AwsFailure):
        return exc.after_lost_answer
    found = failure(exc)
    return found.after_lost_answer if found is not None else bool(getattr(exc, _LOST_ANSWER, False))


async def call(
    fn: Callable[..., Any],
    /,
    *args: Any,
    component: str,
    action: str,
    key: str | None = None,
    errors: Mapping[str, ErrorFactory] | None = None,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread; whatever it raises becomes a core error.

    ``fn`` is a client method or any function of several client calls (e.g. one that
    reads an S3 body too), so that no blocking work is left for the event loop.
    """
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except MechakitError:
        raise
    except Exception as exc:
        raise map_error(exc, component=component, action=action, key=key, errors=errors) from exc


def failure(exc: BaseException) -> AwsFailure | None:
    """The service's error reply carried by a botocore ``ClientError``; None for others."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping) or "Error" not in response:
        return None
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return AwsFailure(
        code=str(error.get("Code") or ""),
        message=str(error.get("Message") or ""),
        status=int(status) if status is not None else None,
        response=response,
    )


def map_error(
    exc: BaseException,
    *,
    component: str,
    action: str,
    key: str | None = None,
    errors: Mapping[str, ErrorFactory] | None = None,
) -> MechakitError:
    """The core error for anything boto3 raised during ``action``."""
    found = failure(exc)
    if found is not None:
        return _service_error(found, component, action, key, errors or {})
    from botocore import exceptions as boto

    reason = str(exc) or type(exc).__name__
    if isinstance(exc, boto.ReadTimeoutError):
        return OperationTimeoutError(
            f"{action}: no answer in time; it may or may not have happened: {reason}",
            component=component,
            key=key,
        )
    if isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
        if isinstance(exc, boto.HTTPClientError) or retried_after_lost_answer(exc):
            return ConnectionFailedError(
                f"{action}: the connection failed after the request was sent; it may or may "
                f"not have happened: {reason}",
                component=component,
                key=key,
            )
        return ConnectionFailedError(f"{action}: {reason}", component=component, key=key)
    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
        return MetadataError(
            f"{action}: no usable AWS credentials: {reason}", component=component, field="accessKey"
        )
    if isinstance(exc, boto.CredentialRetrievalError):
        return ConnectionFailedError(
            f"{action}: could not fetch AWS credentials: {reason}",
            component=component,
            field="accessKey",
        )
    if isinstance(exc, boto.ParamValidationError):
        return InvalidRequestError(f"{action}: {reason}", component=component, key=key)
    return ComponentError(f"{action} failed: {reason}", component=component, key=key)


def _service_error(
    found: AwsFailure,
    component: str,
    action: str,
    key: str | None,
    errors: Mapping[str, ErrorFactory],
) -> MechakitError:
    factory = errors.get(found.code)
    if factory is not None:
        return factory(found)
    error = _plain_service_error(found, component, action, key)
    if (found.status or 0) >= 500 and not isinstance(error, ThrottledError):
        return ConnectionFailedError(
            f"{error.reason}; it may or may not have happened", component=component, key=key
        )
    if error.retriable and found.after_lost_answer:
        # e.g. throttled on the retry of an attempt whose answer was lost: that attempt may
        # have been applied all the same.
        return OperationTimeoutError(
            f"{error.reason}, after an attempt whose answer was lost; it may or may not "
            "have happened",
            component=component,
            key=key,
        )
    return error


def _plain_service_error(
    found: AwsFailure, component: str, action: str, key: str | None
) -> MechakitError:
    detail = f"{action}: {found.code}: {found.message}".rstrip(": ")
    if found.code in THROTTLING_CODES or found.status == 429:
        return ThrottledError(detail, component=component, key=key)
    if found.code in _REFUSED_CREDENTIALS:
        return MetadataError(
            f"{detail} (AWS refused the credentials)", component=component, field="accessKey"
        )
    if found.code in _ACCESS_DENIED:
        return PermissionDeniedError(detail, component=component, key=key)
    if found.status is not None and found.status >= 500:
        return ConnectionFailedError(detail, component=component, key=key)
    if found.code in ("ValidationException", "InvalidParameterException", "InvalidRequest"):
        return InvalidRequestError(detail, component=component, key=key)
    return ComponentError(detail, component=component, key=key)


_LOADER: Any = None
_LOST_ANSWER = "mechakit_lost_answer"
"""Request-context key, reply metadata key and exception attribute of the lost-answer mark."""
_CONNECT_TIMEOUT = 5.0
_READ_TIMEOUT = 30.0
_MAX_ATTEMPTS = 3
_POOL_SIZE = 32
"""As many connections as ``asyncio.to_thread`` may run calls at once."""

__all__ = [
    "THROTTLING_CODES",
    "AwsDriver",
    "AwsFailure",
    "AwsSettings",
    "ErrorFactory",
    "ThrottledError",
    "attempt_maybe_applied",
    "call",
    "client",
    "failure",
    "import_boto3",
    "map_error",
    "retried_after_lost_answer",
]
