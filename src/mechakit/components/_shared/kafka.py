"""Kafka connection settings and publishing shared by pubsub.kafka and bindings.kafka
(kafka-python, imported when a component opens).

kafka-python is blocking: a producer's ``send`` may wait for metadata, so it runs off the
event loop, and its delivery reports arrive on the producer's I/O thread and are handed to
the loop. Consumers live in ``_shared.kafka_consumer``, one thread each.

Security as upstream: ``authType`` none, password (SASL PLAIN or SCRAM, by
``saslMechanism``) or mtls (``clientCert`` + ``clientKey``); TLS is on for password and
mtls, and wherever ``caCert`` is given, unless ``disableTls``. Certificates are PEM text
(as Dapr takes them), not paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr

from mechakit.core.errors import (
    ComponentError,
    ConnectionFailedError,
    InvalidRequestError,
    MetadataError,
    PermissionDeniedError,
)
from mechakit.core.metadata import Bool, Duration, Settings, StrList, setting

KEY_METADATA = ("partitionKey", "key")
"""Request metadata naming the message key (one partition, so one order, per key)."""
_MECHANISMS = {
    "PLAIN": "PLAIN",
    "SHA-256": "SCRAM-SHA-256",
    "SHA-512": "SCRAM-SHA-512",
    "SCRAM-SHA-256": "SCRAM-SHA-256",
    "SCRAM-SHA-512": "SCRAM-SHA-512",
}
_SEND_WITHIN = 10.0
"""Seconds a publish may wait for the broker's metadata (a broker that is down) before it
fails with a retriable error."""
_DELIVERED_WITHIN = 30.0
"""Seconds a published message may take to be acknowledged by the broker."""


class KafkaSettings(Settings):
    """How to reach the brokers, shared by the pub/sub and the binding."""

    brokers: StrList = setting(..., description="Bootstrap brokers, host:port, comma separated.",
                               example="localhost:9092")  # fmt: skip
    client_id: str = setting(
        "", name="clientID", description="Client id shown by the brokers (default: dapr-<app id>)."
    )
    consumer_group: str = setting(
        "",
        description="Consumer group of subscriptions (default: the consumer id, i.e. the app id).",
    )
    initial_offset: Literal["newest", "oldest"] = setting(
        "newest", description="Where a consumer group with no committed offset starts."
    )
    auth_type: Literal["none", "password", "mtls", "oidc", "awsiam"] = setting(
        "none", description="none, password (SASL) or mtls; oidc and awsiam are not supported."
    )
    auth_required: Bool = setting(False, description="Deprecated: true means authType password.")
    sasl_username: str = setting("", description="SASL user (authType password).")
    sasl_password: SecretStr | None = setting(
        None, description="SASL password (authType password)."
    )
    sasl_mechanism: str = setting(
        "PLAIN", description="PLAIN, SHA-256 or SHA-512 (SCRAM).", example="SHA-512"
    )
    ca_cert: SecretStr | None = setting(
        None, description="PEM of the CA the brokers' certificates chain to."
    )
    client_cert: SecretStr | None = setting(None, description="PEM client certificate (mtls).")
    client_key: SecretStr | None = setting(None, description="PEM client key (mtls).")
    skip_verify: Bool = setting(False, description="Do not verify the brokers' certificates.")
    disable_tls: Bool = setting(
        False, name="disableTls", description="Plain TCP even for password auth (insecure)."
    )
    max_message_bytes: Annotated[int, Field(ge=0)] = setting(
        0, description="Largest message a publish may send (0: the client's 1 MiB)."
    )
    version: str = setting(
        "", description="Kafka protocol version of the brokers, e.g. 2.0.0 (default: asked)."
    )
    session_timeout: Duration = setting(
        timedelta(seconds=10), description="Consumer group session timeout.", example="10s"
    )
    heartbeat_interval: Duration = setting(
        timedelta(seconds=3), description="Consumer group heartbeat interval.", example="3s"
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = setting(
        "none", description="Compression of published batches."
    )

    def client_options(self, component: str, *, client_id: str) -> dict[str, Any]:
        """kafka-python's configuration for any of its clients."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.brokers),
            "client_id": self.client_id or client_id,
            "bootstrap_timeout_ms": int(_SEND_WITHIN * 1000),
        }
        if not self.brokers:
            raise MetadataError("brokers must name at least one broker", component=component,
                                field="brokers")  # fmt: skip
        if self.version:
            try:
                options["api_version"] = tuple(int(p) for p in self.version.split(".")[:3])
            except ValueError:
                raise MetadataError(
                    f"version must look like 2.8.0, got {self.version!r}",
                    component=component,
                    field="version",
                ) from None
        auth = "password" if self.auth_required and self.auth_type == "none" else self.auth_type
        if auth in ("oidc", "awsiam"):
            raise MetadataError(
                f"authType {auth!r} is not supported by mechakit's Kafka drivers; use none, "
                "password or mtls",
                component=component,
                field="authType",
            )
        tls = not self.disable_tls and (auth in ("password", "mtls") or self.ca_cert is not None)
        if auth == "mtls" and (self.client_cert is None or self.client_key is None):
            raise MetadataError("authType mtls needs clientCert and clientKey",
                                component=component, field="clientCert")  # fmt: skip
        if auth == "password":
            mechanism = _MECHANISMS.get(self.sasl_mechanism.upper())
            if mechanism is None:
                raise MetadataError(
                    f"saslMechanism must be PLAIN, SHA-256 or SHA-512, got {self.sasl_mechanism!r}",
                    component=component,
                    field="saslMechanism",
                )
            if not self.sasl_username or self.sasl_password is None:
                raise MetadataError("authType password needs saslUsername and saslPassword",
                                    component=component, field="saslUsername")  # fmt: skip
            options.update(
                security_protocol="SASL_SSL" if tls else "SASL_PLAINTEXT",
                sasl_mechanism=mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        elif tls:
            options["security_protocol"] = "SSL"
        if tls:
            options["ssl_context"] = self._ssl_context(component)
        return options

    def _ssl_context(self, component: str) -> ssl.SSLContext:
        try:
            ca = self.ca_cert.get_secret_value() if self.ca_cert is not None else None
            context = ssl.create_default_context(cadata=ca)
            if self.skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.client_cert is not None and self.client_key is not None:
                _load_chain(context, self.client_cert.get_secret_value(),
                            self.client_key.get_secret_value())  # fmt: skip
        except (ssl.SSLError, ValueError) as exc:
            raise MetadataError(f"bad TLS material: {exc}", component=component,
                                field="caCert") from exc  # fmt: skip
        return context

    def producer_options(self, component: str, *, client_id: str) -> dict[str, Any]:
        """The producer's: every message acknowledged by all in-sync replicas, one request
        in flight per broker so that a retried send cannot overtake a later one (the order
        per key). Not idempotent (as upstream): a broker that lost its producer state (a
        restart of an in-memory broker) would leave an idempotent producer failing for good;
        a retried send may then be stored twice, which at-least-once allows."""
        options = self.client_options(component, client_id=client_id)
        options.update(
            acks="all",
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
            max_block_ms=int(_SEND_WITHIN * 1000),
            request_timeout_ms=int(_DELIVERED_WITHIN * 1000) - 1000,
            delivery_timeout_ms=int(_DELIVERED_WITHIN * 1000),
            linger_ms=0,
        )
        if self.compression != "none":
            options["compression_type"] = self.compression
        if self.max_message_bytes:
            options["max_request_size"] = self.max_message_bytes
        return options


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    """``load_cert_chain`` reads files only: the PEM texts go through private temp files."""
    with tempfile.TemporaryDirectory(prefix="mechakit-kafka-") as folder:
        cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for path, text in ((cert_path, cert), (key_path, key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
        context.load_cert_chain(cert_path, key_path)


@dataclass(frozen=True)
class Record:
    """One message to send."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()


def headers_of(metadata: Mapping[str, str], *, skip: Iterable[str] = ()) -> list[tuple[str, bytes]]:
    """Request metadata as Kafka headers (what subscribers get back as metadata)."""
    left_out = {name.lower() for name in skip}
    return [(str(k), str(v).encode()) for k, v in metadata.items() if k.lower() not in left_out]


def key_of(metadata: Mapping[str, str]) -> bytes | None:
    """The message key from ``partitionKey`` (or ``key``), case-insensitively."""
    wanted = {name.lower() for name in KEY_METADATA}
    for name, value in metadata.items():
        if name.lower() in wanted and value:
            return str(value).encode()
    return None


def failure(what: str, exc: BaseException, *, component: str, key: str = "") -> ComponentError:
    """A kafka-python error as mechakit's: retriable ones (and connection trouble) may pass;
    a message too large or a bad topic is the request's fault; auth is a refusal."""
    from kafka import errors

    reason = f"{what}: {type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, ComponentError):
        return exc
    if isinstance(exc, errors.MessageSizeTooLargeError | errors.RecordListTooLargeError
                  | errors.InvalidTopicError):  # fmt: skip
        return InvalidRequestError(reason, component=component, key=key)
    if isinstance(exc, errors.SaslAuthenticationFailedError | errors.AuthorizationError
                  | errors.TopicAuthorizationFailedError):  # fmt: skip
        return PermissionDeniedError(reason, component=component, key=key)
    return ConnectionFailedError(reason, component=component, key=key)


class Producer:
    """A kafka-python ``KafkaProducer`` behind coroutines; ``send_many`` is one batch."""

    def __init__(self, options: dict[str, Any], *, label: str) -> None:
        self._options, self._label = options, label
        self._producer: Any = None

    async def open(self) -> None:
        from kafka import KafkaProducer

        try:
            self._producer = await asyncio.to_thread(KafkaProducer, **self._options)
        except Exception as exc:
            raise failure("cannot reach the Kafka brokers", exc, component=self._label) from exc

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(producer.close, 5)

    async def ping(self) -> None:
        producer = self._require()

        def check() -> None:
            if not producer.bootstrap_connected():
                producer._sender._client.check_version(timeout=2)  # reconnects or raises

        try:
            await asyncio.to_thread(check)
        except Exception as exc:
            raise failure("the Kafka brokers do not answer", exc, component=self._label) from exc

    async def announce(self, topic: str) -> None:
        """Asks for the topic's partitions, which makes brokers that create topics on first
        use create it now: a consumer group that subscribes to a topic nobody has written
        yet would otherwise get no partitions until its next metadata refresh."""
        producer = self._require()
        try:  # the thread may go on after the wait, harmlessly
            await asyncio.wait_for(asyncio.to_thread(producer.partitions_for, topic), 3.0)
        except Exception as exc:  # down, or not allowed: the consumer finds it later
            if isinstance(exc, ComponentError):
                raise
            return

    async def send(self, record: Record) -> None:
        await self.send_many([record])

    async def send_many(self, records: Sequence[Record]) -> list[BaseException | None]:
        """Sends every record, then waits for each broker acknowledgement; the result has
        each record's error (None: sent). A single record's error is raised instead."""
        producer = self._require()
        loop = asyncio.get_running_loop()

        def enqueue() -> list[asyncio.Future[None]]:
            waiting: list[asyncio.Future[None]] = []
            for r in records:
                done: asyncio.Future[None] = loop.create_future()
                try:
                    sent = producer.send(r.topic, value=r.value, key=r.key, headers=list(r.headers))
                except Exception as exc:  # no metadata in time, too large, closed ...
                    done.set_exception(exc)
                else:
                    sent.add_callback(_settle, loop, done, None)
                    sent.add_errback(lambda exc, d=done: _settle(loop, d, exc, None))
                waiting.append(done)
            return waiting

        waiting = await asyncio.to_thread(enqueue)
        if len(waiting) == 1:  # one publish: waited for here, without a task of its own
            outcomes: list[BaseException | None] = [await _acknowledged(waiting[0])]
        else:
            outcomes = await asyncio.gather(*(_acknowledged(w) for w in waiting))
        errors: list[BaseException | None] = [
            failure(f"publish to {r.topic!r} failed", o, component=self._label, key=r.topic)
            if isinstance(o, BaseException) else None
            for r, o in zip(records, outcomes, strict=True)
        ]  # fmt: skip
        if len(records) == 1 and errors[0] is not None:
            raise errors[0]
        return errors

    def _require(self) -> Any:
        if self._producer is None:
            raise ConnectionFailedError("the Kafka producer is closed", component=self._label)
        return self._producer


async def _acknowledged(waiting: asyncio.Future[None]) -> BaseException | None:
    """The error of one publish (None: the brokers acknowledged it)."""
    try:
        async with asyncio.timeout(_DELIVERED_WITHIN + 5):
            await waiting
    except Exception as exc:
        return exc
    return None


def _settle(
    loop: asyncio.AbstractEventLoop,
    done: asyncio.Future[None],
    error: BaseException | None,
    _metadata: Any,
) -> None:
    """Runs on the producer's I/O thread: completes the publish's future on the loop."""

    def complete() -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(complete)


__all__ = ["KEY_METADATA", "KafkaSettings", "Producer", "Record", "failure", "headers_of", "key_of"]
