"""Streaming bodies through two real ``mechakit run`` sidecars: an upload reaches the callee's
app while the caller still sends it, a download reaches the caller while the app still
writes it (each next chunk is only sent once the other end has the previous ones, so a
sidecar that buffered a body whole would stall the test), bytes pass unchanged, and a
caller that goes away stops the app's download."""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .invocation_stream_app import GZIP_TEXT, chunk_of
from .test_invocation import Cluster, Sidecar

STREAM_APP = Path(__file__).with_name("invocation_stream_app.py")
CHUNK = 96 * 1024
CHUNKS = 8
"""768 KiB in all: under the caller's 1 MB limit."""
PATIENCE = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """``svc-a`` (the caller, its request size limit 1 MB) and ``streamer`` (the app above)."""
    running = Cluster(tmp_path_factory.mktemp("streaming"))
    try:
        running.start("svc-a", "http", "--dapr-http-max-request-size", "1")
        running.start("streamer", script=STREAM_APP)
        yield running
    finally:
        for app_id in running:
            running.stop(app_id)


def _through(cluster: Cluster, path: str) -> str:
    return f"{cluster['svc-a'].url}/v1.0/invoke/streamer/method/{path}"


def _app(callee: Sidecar, path: str, method: str = "GET") -> Any:
    """What the streaming app itself says at ``path`` (not through any sidecar)."""
    answer = httpx.request(method, f"http://127.0.0.1:{callee.app_port}{path}", timeout=10)
    answer.raise_for_status()
    return answer.json() if path == "/progress" else answer.text


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {PATIENCE:g}s")
        time.sleep(0.02)


def test_an_upload_reaches_the_app_while_the_caller_still_sends_it(cluster: Cluster) -> None:
    callee = cluster["streamer"]
    sent = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for index in range(CHUNKS):
            if index:  # the app must have what was sent so far before the next is sent
                _until(
                    lambda index=index: _app(callee, "/progress")["received"] >= index * CHUNK,
                    f"the app never had the first {index} chunks while the caller waited",
                )
            data = chunk_of(index, CHUNK)
            sent.update(data)
            yield data

    answer = httpx.post(_through(cluster, "upload"), content=chunks(), timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"bytes": CHUNKS * CHUNK, "sha256": sent.hexdigest()}


def test_a_long_upload_with_its_length_given_is_streamed_too(cluster: Cluster) -> None:
    body = b"".join(chunk_of(index, 64 * 1024) for index in range(10))
    answer = httpx.post(
        _through(cluster, "upload"), content=body, timeout=60
    )  # content-length: 640 KiB
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_a_download_reaches_the_caller_while_the_app_still_writes_it(cluster: Cluster) -> None:
    callee = cluster["streamer"]
    received = bytearray()
    url = _through(cluster, f"download?chunks={CHUNKS}&size={CHUNK}")
    with httpx.stream("GET", url, timeout=PATIENCE) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/octet-stream"
        assert "content-length" not in answer.headers
        for data in answer.iter_raw():
            received += data
            _app(callee, f"/ack?n={len(received) // CHUNK}", "POST")
    assert bytes(received) == b"".join(chunk_of(index, CHUNK) for index in range(CHUNKS))


def test_a_caller_that_goes_away_stops_the_apps_download(cluster: Cluster) -> None:
    callee = cluster["streamer"]
    stopped = _app(callee, "/progress")["downloads_stopped"]
    url = _through(cluster, f"download?chunks={CHUNKS}&size={CHUNK}")
    with httpx.stream("GET", url, timeout=PATIENCE) as answer:
        first = next(answer.iter_raw())
        assert first.startswith(chunk_of(0, 1))
    # Gone after the first chunk: the app's next chunk (acknowledged now) is never wanted.
    _app(callee, "/ack?n=1", "POST")
    _until(
        lambda: _app(callee, "/progress")["downloads_stopped"] > stopped,
        "the app's download was not stopped after its caller went away",
    )


def test_the_apps_bytes_pass_as_sent_with_their_content_encoding(cluster: Cluster) -> None:
    answer = httpx.get(_through(cluster, "gzip"), timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-encoding"] == "gzip"
    assert answer.text == GZIP_TEXT
    assert int(answer.headers["content-length"]) == len(gzip.compress(GZIP_TEXT.encode()))


def test_a_streamed_upload_over_the_request_size_limit_is_refused(cluster: Cluster) -> None:
    def chunks() -> Iterator[bytes]:
        for index in range(16):  # 1.5 MiB, chunked, against a 1 MB limit
            yield chunk_of(index, CHUNK)

    answer = httpx.post(_through(cluster, "upload"), content=chunks(), timeout=60)
    assert answer.status_code == 413, answer.text
    assert answer.json()["errorCode"] == "ERR_BODY_READ"
    assert "--dapr-http-max-request-size" in answer.json()["message"]
