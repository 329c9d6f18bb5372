"""How the shared AWS module maps botocore failures to core errors.

Throttling, refused credentials and timeouts cannot be provoked on moto's server, so
these tests raise the exceptions botocore would (fakes only to inject the faults).
"""

from __future__ import annotations

from typing import Any

import pytest

from mechakit.components._shared.aws import AwsFailure, ThrottledError, call, map_error
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MetadataError,
    NotFoundError,
    OperationTimeoutError,
    PermissionDeniedError,
)

boto = pytest.importorskip("botocore.exceptions")

LABEL = "state.aws.dynamodb 'store'"


def client_error(code: str, status: int = 400, message: str = "it failed") -> Exception:
    error: Exception = boto.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutItem",
    )
    return error


def mapped(exc: Exception, **kwargs: Any) -> Exception:
    return map_error(exc, component=LABEL, action="set", key="k", **kwargs)


@pytest.mark.parametrize(
    "code",
    [
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "RequestLimitExceeded",
    ],
)
def test_throttling_is_a_retriable_throttled_error_naming_the_key(code: str) -> None:
    error = mapped(client_error(code))
    assert isinstance(error, ThrottledError)
    assert error.retriable
    assert error.key == "k"
    assert code in str(error)


def test_any_429_reply_is_throttling() -> None:
    assert isinstance(mapped(client_error("WhoKnows", status=429)), ThrottledError)


@pytest.mark.parametrize("code", ["UnrecognizedClientException", "InvalidSignatureException"])
def test_refused_credentials_are_a_metadata_error_on_access_key(code: str) -> None:
    error = mapped(client_error(code))
    assert isinstance(error, MetadataError)
    assert error.field == "accessKey"
    assert str(error).startswith(LABEL)


def test_access_denied_is_permission_denied() -> None:
    assert isinstance(mapped(client_error("AccessDeniedException")), PermissionDeniedError)


def test_server_errors_are_retriable_and_validation_errors_are_invalid_requests() -> None:
    assert isinstance(
        mapped(client_error("InternalServerError", status=500)), ConnectionFailedError
    )
    assert isinstance(mapped(client_error("ValidationException")), InvalidRequestError)
    other = mapped(client_error("SomethingElse", message="details from AWS"))
    assert type(other) is ComponentError
    assert "SomethingElse: details from AWS" in str(other)


def test_a_caller_mapping_wins_over_the_defaults() -> None:
    def not_found(failure: AwsFailure) -> NotFoundError:
        return NotFoundError(f"gone ({failure.code})", component=LABEL, key="k")

    error = mapped(client_error("ThrottlingException"), errors={"ThrottlingException": not_found})
    assert isinstance(error, NotFoundError)


def test_unreachable_endpoints_and_timeouts_are_connection_failures() -> None:
    unreachable = mapped(boto.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert isinstance(unreachable, ConnectionFailedError)
    assert not isinstance(unreachable, OperationTimeoutError)
    connect = mapped(boto.ConnectTimeoutError(endpoint_url="http://10.0.0.1"))
    assert isinstance(connect, ConnectionFailedError)
    read = mapped(boto.ReadTimeoutError(endpoint_url="http://10.0.0.1"))
    assert isinstance(read, OperationTimeoutError)
    assert read.retriable


def test_missing_credentials_at_request_time_name_access_key() -> None:
    error = mapped(boto.NoCredentialsError())
    assert isinstance(error, MetadataError)
    assert error.field == "accessKey"


async def test_call_runs_off_the_event_loop_and_maps_what_it_raises() -> None:
    import threading

    loop_thread = threading.get_ident()

    def blocking() -> int:
        assert threading.get_ident() != loop_thread
        raise client_error("ThrottlingException")

    with pytest.raises(ThrottledError):
        await call(blocking, component=LABEL, action="set", key="k")
