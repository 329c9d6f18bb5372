"""Settings, broker address, TLS context, client ids and topic filters of mqtt3."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field

from mechakit.core.errors import InvalidRequestError, MetadataError
from mechakit.core.metadata import Bool, Duration, Sensitive, Settings, setting

_PLAIN = {"tcp": False, "mqtt": False, "ws": False}
_TLS = {"ssl": True, "tls": True, "mqtts": True, "tcps": True, "wss": True}
TOPIC_METADATA = "topic"
"""Metadata naming the topic a message was published on (pub/sub wildcards, bindings)."""


class MQTTSettings(Settings):
    """Dapr's mqtt3 metadata (pubsub and bindings), plus the instance identity."""

    url: str = setting(
        ...,
        description="Broker address: tcp://, mqtt://, ssl://, mqtts://, ws:// or wss:// "
        "[user:password@]host[:port]. The password is taken from it.",
        example="tcp://localhost:1883",
    )
    qos: Annotated[int, Field(ge=0, le=2)] = setting(
        1, description="QoS of publishing and subscribing (0, 1 or 2).", example="1"
    )
    retain: Bool = setting(False, description="Publish messages as retained.")
    clean_session: Bool = setting(
        False,
        description="Start every connection with a fresh session: what was left unacked "
        "while disconnected is lost. False keeps the session across reconnects and restarts.",
    )
    consumer_id: str = setting(
        "",
        name="consumerID",
        description="Client id prefix and shared-subscription group (default: the app id).",
        example="orders-service",
    )
    instance_id: str = setting(
        "",
        name="instanceID",
        description="This instance's identity in its client ids (default: "
        "$MECHAKIT_INSTANCE_ID, else a hash of the host name, working directory and "
        "component name). A successor (restart) must keep it; concurrent instances differ.",
    )
    ca_cert: str = setting("", description="CA certificate (PEM, or a file path) to trust.")
    client_cert: str = setting(
        "", description="Client certificate (PEM, or a file path), with clientKey."
    )
    client_key: Sensitive | None = setting(
        None, description="Client key (PEM, or a file path), with clientCert."
    )
    protocol_version: Literal["3.1.1", "5"] = setting(
        "3.1.1",
        description="MQTT protocol: 3.1.1 (Dapr's) carries the payload only; 5 also "
        "carries the content type and metadata (user properties).",
        example="3.1.1",
    )
    keep_alive: Duration = setting(
        timedelta(seconds=30), description="Keep-alive interval.", example="30s"
    )
    connect_timeout: Duration = setting(
        timedelta(seconds=10),
        description="How long init waits for the first connection, and publish for one.",
        example="10s",
    )


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool
    websockets: bool
    path: str
    username: str | None
    password: str | None


def endpoint(settings: MQTTSettings, *, component: str) -> Endpoint:
    """The broker address of ``url``; a bad one is a MetadataError naming ``url``."""
    raw = settings.url.strip()
    parts = urlsplit(raw if "://" in raw else f"tcp://{raw}")
    scheme = parts.scheme.lower()
    if scheme not in _PLAIN and scheme not in _TLS:
        raise MetadataError(
            f"url scheme {scheme!r} is not one of {', '.join([*_PLAIN, *_TLS])}",
            component=component,
            field="url",
        )
    try:
        port = parts.port
    except ValueError:
        raise MetadataError("url has an invalid port", component=component, field="url") from None
    if not parts.hostname:
        raise MetadataError("url has no host", component=component, field="url")
    tls = _TLS.get(scheme, False) or bool(
        settings.ca_cert or settings.client_cert or settings.client_key
    )
    websockets = scheme in ("ws", "wss")
    default_port = (443 if tls else 80) if websockets else (8883 if tls else 1883)
    return Endpoint(
        host=parts.hostname,
        port=port or default_port,
        tls=tls,
        websockets=websockets,
        path=parts.path or "/mqtt",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def tls_context(settings: MQTTSettings, *, component: str) -> ssl.SSLContext:
    """A client TLS context from caCert / clientCert / clientKey (PEM text or file paths)."""
    key = settings.client_key.get_secret_value() if settings.client_key else ""
    if bool(settings.client_cert) != bool(key):
        raise MetadataError(
            "metadata 'clientCert' and 'clientKey' go together",
            component=component,
            field="clientKey" if settings.client_cert else "clientCert",
        )
    try:
        ca = settings.ca_cert
        if ca and _is_pem(ca):
            context = ssl.create_default_context(cadata=ca)
        else:
            context = ssl.create_default_context(cafile=ca or None)
        if settings.client_cert:
            with _pem_files(settings.client_cert, key) as (cert_file, key_file):
                context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        field = "clientCert" if settings.client_cert else "caCert"
        raise MetadataError(
            f"invalid TLS certificate or key: {exc}", component=component, field=field
        ) from None
    return context


def _is_pem(value: str) -> bool:
    return "-----BEGIN" in value


@contextlib.contextmanager
def _pem_files(cert: str, key: str) -> Iterator[tuple[str, str]]:
    """File paths for ``cert`` and ``key`` (load_cert_chain reads files only): PEM text is
    written to a private temp folder, removed right after."""
    if not _is_pem(cert) and not _is_pem(key):
        yield cert, key
        return
    with tempfile.TemporaryDirectory(prefix="mechakit-mqtt-") as folder:
        paths = []
        for name, value in (("cert.pem", cert), ("key.pem", key)):
            if not _is_pem(value):
                paths.append(value)
                continue
            path = Path(folder) / name
            path.touch(mode=0o600)
            path.write_text(value)
            paths.append(str(path))
        yield paths[0], paths[1]


INSTANCE_ENV = "MECHAKIT_INSTANCE_ID"
"""Names this instance where one host runs several from one folder (each its own value)."""


def instance_identity(settings: MQTTSettings, component_name: str, consumer: str = "") -> str:
    """``instanceID``, else ``$MECHAKIT_INSTANCE_ID``, else a stable hash of host name,
    working directory and component name, with the lowest instance slot that no live
    process of this host holds for ``consumer`` (none for the first, ``-1`` for the
    second, ...).

    Two live clients with one id make the broker drop the older one, and a restarted
    instance must get its old id back to take over its session's unacked messages: the
    slot is an exclusive lock file under ``$MECHAKIT_HOME/instances`` that the OS releases
    when the process dies, so a restart claims the same slot again. ``release_identity``
    gives it back when the component closes."""
    chosen = settings.instance_id or os.environ.get(INSTANCE_ENV, "")
    if chosen:
        return _clean(chosen)
    seed = f"{socket.gethostname()}|{os.getcwd()}|{component_name}"
    return _claim_slot(hashlib.sha256(seed.encode()).hexdigest()[:10], consumer)


_SLOTS = 64
_held: dict[str, tuple[str, int]] = {}
"""Identities this process holds: their lock file and its descriptor."""


def _claim_slot(base: str, consumer: str) -> str:
    home = os.environ.get("MECHAKIT_HOME") or os.path.join(os.path.expanduser("~"), ".mechakit")
    folder = Path(home) / "instances"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # nowhere to coordinate: one instance per folder, as before
        return base
    import fcntl

    held = {path for path, _ in _held.values()}
    for slot in range(_SLOTS):
        identity = base if slot == 0 else f"{base}-{slot}"
        path = str(folder / f"{_clean(consumer) or '_'}-{identity}.lock")
        if path in held:
            continue
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            continue
        _held[f"{consumer}\0{identity}"] = (path, descriptor)
        return identity
    return base


def release_identity(identity: str, consumer: str = "") -> None:
    """Gives back an instance slot ``instance_identity`` claimed (nothing for a chosen id)."""
    path_and_descriptor = _held.pop(f"{consumer}\0{identity}", None)
    if path_and_descriptor is not None:
        os.close(path_and_descriptor[1])


def client_id(*parts: str) -> str:
    """A client id from ``parts``; a topic part is hashed (ids stay short and plain)."""
    return "-".join(_clean(p) for p in parts if p)[:128]


def topic_hash(topic: str) -> str:
    return hashlib.sha256(topic.encode()).hexdigest()[:8]


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def shared_filter(group: str, topic: str) -> str:
    """``$share/<group>/<topic>`` (competing consumers); a topic already shared is kept."""
    if topic.startswith("$share/"):
        return topic
    return f"$share/{_clean(group)}/{topic}"


def plain_filter(topic_filter: str) -> str:
    """The topic filter of a possibly shared subscription."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
    return topic_filter


def check_filter(topic_filter: str, *, component: str) -> None:
    """MQTT's rules for a subscription's filter: ``#`` last and alone, ``+`` alone."""
    levels = plain_filter(topic_filter).split("/")
    bad = not plain_filter(topic_filter) or any(
        ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+")
        for i, level in enumerate(levels)
    )
    if bad:
        raise InvalidRequestError(
            f"invalid MQTT topic filter {topic_filter!r}", component=component, key=topic_filter
        )


def check_topic(topic: str, *, component: str) -> None:
    """A topic to publish to has no wildcards."""
    if not topic or "+" in topic or "#" in topic:
        raise InvalidRequestError(
            f"cannot publish to {topic!r}: no wildcards in a topic name",
            component=component,
            key=topic,
        )
