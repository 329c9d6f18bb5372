"""bindings.http against a real HTTP server on a free loopback port (the http-echo backend)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

from mechakit.components.bindings.http import HTTPBinding, HTTPNotFoundError, HTTPStatusError
from mechakit.conformance.backends import free_port
from mechakit.conformance.backends_http import EchoServer
from mechakit.core.bindings import InvokeRequest, InvokeResponse
from mechakit.core.component import ComponentMetadata
from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MetadataError,
    NotFoundError,
    NotSupportedError,
    OperationTimeoutError,
)

BindingFactory = Callable[..., Awaitable[HTTPBinding]]


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    echo = EchoServer().start()
    yield echo
    echo.stop()


@pytest_asyncio.fixture
async def make(server: EchoServer) -> AsyncIterator[BindingFactory]:
    made: list[HTTPBinding] = []

    async def factory(**properties: str) -> HTTPBinding:
        binding = HTTPBinding()
        made.append(binding)
        await binding.init(
            ComponentMetadata("api", "bindings.http", {"url": server.url, **properties})
        )
        return binding

    yield factory
    for binding in made:
        await binding.close()


@pytest_asyncio.fixture
async def binding(make: BindingFactory) -> HTTPBinding:
    return await make()


async def invoke(
    binding: HTTPBinding, operation: str, data: bytes = b"", **metadata: str
) -> InvokeResponse:
    return await binding.invoke(InvokeRequest(operation, data, metadata))


async def inspect(binding: HTTPBinding, operation: str, data: bytes = b"", **metadata: str) -> Any:
    """What the server received, as the /inspect endpoint describes it."""
    path = metadata.pop("path", "inspect")
    return json.loads((await invoke(binding, operation, data, path=path, **metadata)).data)


@pytest.mark.parametrize(
    ("operation", "method"),
    [
        ("get", "GET"),
        ("head", "HEAD"),
        ("post", "POST"),
        ("create", "POST"),
        ("put", "PUT"),
        ("patch", "PATCH"),
        ("delete", "DELETE"),
        ("options", "OPTIONS"),
        ("trace", "TRACE"),
    ],
)
async def test_each_operation_sends_its_http_method(
    binding: HTTPBinding, operation: str, method: str
) -> None:
    response = await invoke(binding, operation, path="echo")
    assert response.metadata["X-Echo-Method"] == method
    assert response.metadata["statusCode"] == "200"
    assert response.metadata["status"] == "200 OK"


async def test_operations_are_the_http_verbs_and_create(binding: HTTPBinding) -> None:
    assert sorted(binding.operations()) == sorted(
        ["create", "get", "head", "post", "put", "patch", "delete", "options", "trace"]
    )


@pytest.mark.parametrize("operation", ["post", "put", "patch", "create"])
async def test_data_is_sent_as_the_body_by_writing_methods(
    binding: HTTPBinding, operation: str
) -> None:
    assert (await invoke(binding, operation, b'{"n": 1}')).data == b'{"n": 1}'


@pytest.mark.parametrize("operation", ["get", "delete", "options"])
async def test_data_is_not_sent_by_other_methods(binding: HTTPBinding, operation: str) -> None:
    assert (await inspect(binding, operation, b"ignored"))["body"] == ""


async def test_head_returns_no_body(binding: HTTPBinding) -> None:
    response = await invoke(binding, "head", path="bytes/10")
    assert response.data == b"" and response.metadata["Content-Length"] == "10"


@pytest.mark.parametrize(
    ("base", "path", "received"),
    [
        ("", "inspect/a/b?x=1", "/inspect/a/b?x=1"),
        ("", "/inspect/lead", "/inspect/lead"),
        ("/", "/inspect/both", "/inspect/both"),
        ("/inspect/base", "tail", "/inspect/base/tail"),
    ],
)
async def test_path_metadata_is_appended_to_the_url_with_one_slash(
    make: BindingFactory, server: EchoServer, base: str, path: str, received: str
) -> None:
    binding = await make(url=server.url + base)
    assert (await inspect(binding, "get", path=path))["path"] == received


async def test_capitalised_metadata_and_trace_context_become_headers(
    binding: HTTPBinding,
) -> None:
    seen = await inspect(
        binding,
        "post",
        b"x",
        **{
            "X-Custom": "yes",
            "Content-Type": "text/plain",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "ttlInSeconds": "5",
        },
    )
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["x-custom"] == "yes"
    assert headers["content-type"] == "text/plain"
    assert headers["traceparent"].startswith("00-0af7")
    assert "ttlinseconds" not in headers and "path" not in headers


async def test_json_content_type_and_accept_are_the_defaults(binding: HTTPBinding) -> None:
    headers = {k.lower(): v for k, v in (await inspect(binding, "post", b"{}"))["headers"].items()}
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["accept"] == "application/json; charset=utf-8"


async def test_response_headers_are_metadata_with_go_style_names(binding: HTTPBinding) -> None:
    response = await invoke(binding, "get", path="inspect")
    assert response.metadata["Content-Type"] == "application/json"
    assert response.metadata["X-Echo-Path"] == "/inspect"
    assert response.content_type == "application/json"


async def test_a_404_answer_is_a_not_found_error_keeping_the_response(
    binding: HTTPBinding,
) -> None:
    with pytest.raises(HTTPNotFoundError) as caught:
        await invoke(binding, "get", path="status/404")
    assert isinstance(caught.value, NotFoundError)
    assert "404 Not Found" in str(caught.value) and "'api'" in str(caught.value)
    assert caught.value.status_code == 404
    assert caught.value.response.data == b"status 404"


@pytest.mark.parametrize("status", [400, 409, 500, 503])
async def test_an_error_status_raises_with_the_status_in_the_message(
    binding: HTTPBinding, status: int
) -> None:
    with pytest.raises(HTTPStatusError, match=f"answered {status}") as caught:
        await invoke(binding, "post", path=f"status/{status}")
    assert isinstance(caught.value, ComponentError) and not caught.value.retriable
    assert caught.value.response.metadata["statusCode"] == str(status)


async def test_error_if_not_2xx_false_returns_the_error_response(
    make: BindingFactory, binding: HTTPBinding
) -> None:
    per_request = await invoke(binding, "get", path="status/500", errorIfNot2XX="false")
    assert per_request.metadata["statusCode"] == "500"
    lenient = await make(errorIfNot2XX="false")
    assert (await invoke(lenient, "get", path="status/404")).data == b"status 404"


async def test_a_body_over_the_size_limit_is_an_error(make: BindingFactory) -> None:
    binding = await make(maxResponseBodySize="1Ki")
    assert len((await invoke(binding, "get", path="bytes/1024")).data) == 1024
    with pytest.raises(ComponentError, match=r"maxResponseBodySize \(1024 bytes\)") as caught:
        await invoke(binding, "get", path="bytes/1025")
    assert caught.value.field == "maxResponseBodySize"


async def test_a_slow_response_raises_operation_timeout(make: BindingFactory) -> None:
    binding = await make(responseTimeout="100ms")
    with pytest.raises(OperationTimeoutError, match="responseTimeout"):
        await invoke(binding, "get", path="delay/0.5")


async def test_an_unreachable_server_raises_connection_failed() -> None:
    binding = HTTPBinding()
    await binding.init(
        ComponentMetadata("api", "bindings.http", {"url": f"http://127.0.0.1:{free_port()}"})
    )
    try:
        with pytest.raises(ConnectionFailedError) as caught:
            await invoke(binding, "get")
        assert caught.value.retriable
    finally:
        await binding.close()


async def test_error_messages_leave_out_url_credentials() -> None:
    binding = HTTPBinding()
    url = f"http://user:pa55word@127.0.0.1:{free_port()}/api"
    await binding.init(ComponentMetadata("api", "bindings.http", {"url": url}))
    try:
        with pytest.raises(ConnectionFailedError) as caught:
            await invoke(binding, "get")
        assert "pa55word" not in str(caught.value) and "127.0.0.1" in str(caught.value)
    finally:
        await binding.close()


@pytest.mark.parametrize("header", [{"X-Bad": "two\nlines"}, {"Bad Name": "x"}, {"X-U": "ü"}])
async def test_a_header_that_cannot_be_sent_is_an_invalid_request(
    binding: HTTPBinding, header: dict[str, str]
) -> None:
    with pytest.raises(InvalidRequestError, match="header metadata"):
        await binding.invoke(InvokeRequest("get", metadata=header))


async def test_security_token_is_sent_in_its_header(make: BindingFactory) -> None:
    binding = await make(securityToken="t0ken", securityTokenHeader="X-Api-Key")
    headers = (await inspect(binding, "get"))["headers"]
    assert {k.lower(): v for k, v in headers.items()}["x-api-key"] == "t0ken"


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"securityToken": "t0ken"}, "securityTokenHeader"),
        ({"securityTokenHeader": "X-Api-Key"}, "securityToken"),
        ({"MTLSRootCA": "/etc/ca.pem"}, "MTLSRootCA"),
    ],
)
async def test_incomplete_or_unsupported_settings_fail_init(
    make: BindingFactory, properties: dict[str, str], field: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        await make(**properties)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "example.com/api", "http://", "http://host:port/", ""]
)
async def test_url_must_be_an_absolute_http_url(url: str) -> None:
    with pytest.raises(MetadataError, match="'url'"):
        await HTTPBinding().init(ComponentMetadata("api", "bindings.http", {"url": url}))


async def test_url_is_required() -> None:
    with pytest.raises(MetadataError, match="'url' is required"):
        await HTTPBinding().init(ComponentMetadata("api", "bindings.http"))


async def test_unknown_operation_is_not_supported(binding: HTTPBinding) -> None:
    with pytest.raises(NotSupportedError, match="'connect'"):
        await invoke(binding, "connect")


async def test_bad_error_if_not_2xx_word_is_an_invalid_request(binding: HTTPBinding) -> None:
    with pytest.raises(InvalidRequestError, match="errorIfNot2XX"):
        await invoke(binding, "get", errorIfNot2XX="sometimes")


async def test_invoke_after_close_fails_and_close_is_idempotent(binding: HTTPBinding) -> None:
    await binding.close()
    await binding.close()
    with pytest.raises(ComponentError, match="closed"):
        await invoke(binding, "get")
