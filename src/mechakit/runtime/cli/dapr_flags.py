"""The flags of ``dapr run``, and the daprd flags it is often given, as ``mechakit run`` takes them.

Dapr's CLI reference (docs.dapr.io, reference/cli/dapr-run) and the CLI itself (dapr/cli
``cmd/run.go``) list each flag with its short form, the environment variable the app is
given and its default. Every one of them is accepted here, in its long and short form: most
work as in Dapr; those that mean nothing without Dapr's control plane, containers or Go
runtime (profiling, placement, scheduler, image, ...) are accepted and named in one notice
line at start-up (:func:`notices`), never a usage error.

Values are read as Dapr reads them: sizes are Kubernetes quantities (``4Mi``; the legacy
``--dapr-http-max-request-size`` is in MB and ``--dapr-http-read-buffer-size`` in KB), a
negative port or size means "pick one" or "no limit" as in the CLI, booleans take ``=false``.
"""

from __future__ import annotations

import argparse
import logging
import secrets

from mechakit.runtime.app_transport import APP_PROTOCOLS, is_grpc

DEFAULT_HTTP_PORT = 3500
DEFAULT_GRPC_PORT = 50001
DEFAULT_INTERNAL_GRPC_PORT = 50002
DEFAULT_METRICS_PORT = 9090
DEFAULT_PROFILE_PORT = 7777
DEFAULT_MAX_BODY_SIZE = 4 << 20
"""daprd's ``--max-body-size`` (``4Mi``)."""
DEFAULT_READ_BUFFER_SIZE = 4 << 10
"""daprd's ``--read-buffer-size`` (``4Ki``): the most request-line and header bytes."""
DEFAULT_HEALTH_PATH = "/healthz"
DEFAULT_HEALTH_INTERVAL = 5.0
"""Seconds between app health probes (daprd's default)."""
DEFAULT_HEALTH_TIMEOUT_MS = 500
DEFAULT_HEALTH_THRESHOLD = 3
DEFAULT_GRACEFUL_SHUTDOWN = 5.0
"""daprd's ``--dapr-graceful-shutdown-seconds``."""

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}

NOTICES = {
    "enable_profiling": ("--enable-profiling", "there is no pprof profiling server here"),
    "profile_port": ("--profile-port", "there is no pprof profiling server here"),
    "placement_host_address": (
        "--placement-host-address",
        "there are no actors here, so no placement service",
    ),
    "scheduler_host_address": (
        "--scheduler-host-address",
        "there is no scheduler service here (jobs, actor reminders, workflows)",
    ),
    "image": ("--image", "no container image is run: mechakit is the sidecar"),
    "runtime_path": ("--runtime-path", "there is no daprd binary to look for"),
    "kubernetes": ("--kubernetes", "it only applies to a multi-app run (--run-file)"),
}
"""Flags that mean nothing here: destination → (flag, why), one notice line each when given."""


def port_or_free(text: str) -> int:
    """A port to listen on; 0 or negative (the CLI's ``-1``): a free one."""
    port = _integer(text, "a port number")
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {port}")
    return max(port, 0)


def app_port(text: str) -> int | None:
    """The app's port; 0 or negative (the CLI's ``-1``): the app listens on none."""
    return port_or_free(text) or None


def flag_bool(text: str) -> bool:
    from mechakit.core.metadata import parse_bool  # here: the other commands need no pydantic

    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def body_size(text: str) -> int:
    """A size as daprd reads ``--max-body-size``: a quantity (``4Mi``, ``512k``, bytes);
    0 or negative: no limit (0)."""
    return _size(text, unit=1)


def megabytes(text: str) -> int:
    """The legacy ``--dapr-http-max-request-size``: a number of MB (or a quantity)."""
    return _size(text, unit=1 << 20)


def kilobytes(text: str) -> int:
    """The legacy ``--dapr-http-read-buffer-size``: a number of KB (or a quantity)."""
    return _size(text, unit=1 << 10)


def comma_list(text: str) -> list[str]:
    """A flag Dapr reads as a comma-separated list (``--resources-path a,b``)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def whole(text: str) -> int:
    return _integer(text, "a whole number")


def count(text: str) -> int:
    """A whole number >= 0."""
    value = whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def _size(text: str, *, unit: int) -> int:
    stripped = text.strip()
    if stripped.startswith("-"):
        body = stripped[1:]
        if body and _parses_as_size(body):
            return 0
    from mechakit.core.metadata import parse_bytesize

    try:
        if stripped.isdigit():
            return int(stripped) * unit
        return parse_bytesize(stripped)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parses_as_size(text: str) -> bool:
    from mechakit.core.metadata import parse_bytesize

    try:
        parse_bytesize(text)
    except ValueError:
        return False
    return True


_ADJECTIVES = (
    "amber", "brave", "calm", "clever", "crisp", "daring", "eager", "fuzzy", "gentle",
    "glad", "golden", "happy", "jolly", "keen", "lively", "lucky", "mellow", "nimble",
    "proud", "quick", "quiet", "rapid", "shiny", "snowy", "steady", "sunny", "swift",
    "tidy", "vivid", "witty",
)  # fmt: skip
_NOUNS = (
    "badger", "beacon", "bison", "canyon", "comet", "falcon", "fjord", "gecko", "glacier",
    "harbor", "heron", "lantern", "lynx", "maple", "meadow", "otter", "pebble", "puffin",
    "quartz", "raven", "river", "salmon", "sparrow", "summit", "tundra", "walrus", "willow",
    "yak", "zebra", "zephyr",
)  # fmt: skip


def generate_app_id() -> str:
    """An app id for a ``mechakit run`` without ``--app-id``: two words joined by a dash
    (``brave-otter``), as the Dapr CLI makes one from a generated two-word name."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


def _bool_flag(
    group: argparse._ArgumentGroup, *names: str, default: bool | None, help: str
) -> None:
    """A Go-style boolean: ``--flag`` is true, ``--flag=false`` false."""
    group.add_argument(
        *names, nargs="?", const=True, default=default, type=flag_bool, metavar="BOOL", help=help
    )


def add_dapr_run_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``dapr run`` (group "dapr run flags") and the daprd flags
    ``--dapr-graceful-shutdown-seconds``, ``--enable-metrics`` and the legacy size names."""
    run = parser.add_argument_group(
        "dapr run flags",
        "The flags of Dapr's 'dapr run', with its defaults. The app gets APP_ID, APP_PORT, "
        "APP_PROTOCOL, APP_CHANNEL_ADDRESS, DAPR_HTTP_PORT, DAPR_GRPC_PORT and "
        "DAPR_METRICS_PORT, as from dapr run.",
    )
    run.add_argument(
        "-a",
        "--app-id",
        default=None,
        help="the app id: key prefix, event source, consumer group (env APP_ID; default: a "
        "generated two-word id, as dapr run makes)",
    )
    run.add_argument(
        "-p",
        "--app-port",
        type=app_port,
        default=None,
        metavar="PORT",
        help="where the app listens: its subscriptions and input-binding events are delivered "
        "there once it answers (env APP_PORT; default: none)",
    )
    run.add_argument(
        "-P",
        "--app-protocol",
        type=str.lower,
        choices=APP_PROTOCOLS,
        default="http",
        help="how the app is called: http (GET /dapr/subscribe, POST <route>) or grpc "
        "(AppCallback); https and grpcs over TLS without checking the app's certificate, "
        "h2c as HTTP/2 without TLS, as daprd (env APP_PROTOCOL; default http)",
    )
    run.add_argument(
        "--app-channel-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address the app listens on (env APP_CHANNEL_ADDRESS; default 127.0.0.1)",
    )
    run.add_argument(
        "--app-max-concurrency",
        type=whole,
        default=-1,
        metavar="N",
        help="most deliveries (events, binding events, configuration updates) in flight to "
        "the app at once (default -1: unlimited)",
    )
    run.add_argument(
        "-d",
        "--resources-path",
        "--components-path",
        dest="resources_paths",
        action="extend",
        type=comma_list,
        metavar="DIR",
        help="a folder (or file) of Component, Subscription and Configuration YAML; "
        "repeatable or comma-separated (default: $MECHAKIT_HOME/components, "
        "~/.mechakit/components, else built-in SQLite state, in-memory pub/sub and locks)",
    )
    run.add_argument(
        "-c", "--config", metavar="FILE", help="a file with the Configuration to apply"
    )
    run.add_argument(
        "-H",
        "--dapr-http-port",
        type=port_or_free,
        default=DEFAULT_HTTP_PORT,
        metavar="PORT",
        help=f"where the Dapr HTTP API listens (env DAPR_HTTP_PORT; default "
        f"{DEFAULT_HTTP_PORT}; 0 or -1: a free port)",
    )
    run.add_argument(
        "-G",
        "--dapr-grpc-port",
        type=port_or_free,
        default=None,
        metavar="PORT",
        help=f"where the Dapr gRPC API listens (env DAPR_GRPC_PORT; default "
        f"{DEFAULT_GRPC_PORT}, skipped with a warning when taken; 0 or -1: a free port)",
    )
    run.add_argument(
        "-I",
        "--dapr-internal-grpc-port",
        type=port_or_free,
        default=None,
        metavar="PORT",
        help=f"where Dapr's internal gRPC API (sidecar to sidecar) listens: bound, nothing is "
        f"served there yet (default {DEFAULT_INTERNAL_GRPC_PORT}, a free port when taken; "
        "0 or -1: a free port)",
    )
    run.add_argument(
        "-M",
        "--metrics-port",
        type=port_or_free,
        default=None,
        metavar="PORT",
        help=f"where Prometheus metrics are served, GET /metrics (env DAPR_METRICS_PORT; "
        f"default {DEFAULT_METRICS_PORT}, a free port when taken; 0 or -1: a free port)",
    )
    run.add_argument(
        "--dapr-listen-addresses",
        "--api-listen-address",
        dest="api_listen_addresses",
        type=comma_list,
        default=["127.0.0.1"],
        metavar="ADDRESSES",
        help="comma-separated addresses the Dapr APIs and metrics listen on (default "
        "127.0.0.1; 0.0.0.0 exposes them)",
    )
    run.add_argument(
        "-u",
        "--unix-domain-socket",
        metavar="DIR",
        default=None,
        help="serve the HTTP and gRPC APIs on Unix sockets in DIR instead of TCP ports, "
        "as daprd: DIR/dapr-<app-id>-http.socket and DIR/dapr-<app-id>-grpc.socket",
    )
    run.add_argument(
        "--log-level",
        type=str.lower,
        choices=tuple(LOG_LEVELS),
        default="info",
        help="debug, info, warn, error, fatal or panic (default info)",
    )
    _bool_flag(
        run,
        "--log-as-json",
        default=False,
        help="write each log line as a JSON object, as daprd --log-as-json",
    )
    _bool_flag(
        run,
        "--enable-api-logging",
        default=False,
        help="log every Dapr HTTP API call at info: method, path, status, duration",
    )
    run.add_argument(
        "--max-body-size",
        type=body_size,
        default=DEFAULT_MAX_BODY_SIZE,
        metavar="SIZE",
        help="larger HTTP request bodies get 413 (default 4Mi; 0 or -1: no limit)",
    )
    run.add_argument(
        "--dapr-http-max-request-size",
        dest="max_body_size",
        type=megabytes,
        default=DEFAULT_MAX_BODY_SIZE,
        metavar="MB",
        help="the legacy name of --max-body-size, in MB (default 4)",
    )
    run.add_argument(
        "--read-buffer-size",
        type=body_size,
        default=DEFAULT_READ_BUFFER_SIZE,
        metavar="SIZE",
        help="a request line and headers over this (plus the 4 KiB Go's server allows "
        "beyond it) get 431 (default 4Ki; 0 or -1: no limit)",
    )
    run.add_argument(
        "--dapr-http-read-buffer-size",
        dest="read_buffer_size",
        type=kilobytes,
        default=DEFAULT_READ_BUFFER_SIZE,
        metavar="KB",
        help="the legacy name of --read-buffer-size, in KB (default 4)",
    )
    _bool_flag(
        run,
        "--enable-app-health-check",
        default=False,
        help="probe the app (HTTP GET of --app-health-check-path, or gRPC "
        "AppCallbackHealthCheck); nothing is delivered to it until a probe succeeds, nor "
        "after --app-health-threshold failures in a row until one succeeds again",
    )
    run.add_argument(
        "--app-health-check-path",
        default=DEFAULT_HEALTH_PATH,
        metavar="PATH",
        help=f"the path probed over HTTP (default {DEFAULT_HEALTH_PATH})",
    )
    run.add_argument(
        "--app-health-probe-interval",
        type=non_negative,
        default=DEFAULT_HEALTH_INTERVAL,
        metavar="SECONDS",
        help="seconds between probes (default 5; 0: the default)",
    )
    run.add_argument(
        "--app-health-probe-timeout",
        type=non_negative,
        default=DEFAULT_HEALTH_TIMEOUT_MS,
        metavar="MS",
        help="milliseconds a probe may take (default 500; 0: the default)",
    )
    run.add_argument(
        "--app-health-threshold",
        type=whole,
        default=DEFAULT_HEALTH_THRESHOLD,
        metavar="N",
        help="failed probes in a row after which the app is unhealthy (default 3; 0: the default)",
    )
    _bool_flag(
        run,
        "--app-ssl",
        default=False,
        help="call the app over TLS: --app-protocol http becomes https, grpc grpcs "
        "(deprecated in Dapr for those)",
    )
    run.add_argument(
        "-f",
        "--run-file",
        metavar="FILE",
        default=None,
        help="multi-app run: start every app of this template (a folder: its dapr.yaml), "
        "each with its sidecar",
    )
    ignored = parser.add_argument_group(
        "accepted for dapr run compatibility",
        "These have no meaning here; each one given is named in one notice line at start-up.",
    )
    _bool_flag(ignored, "--enable-profiling", default=None, help="(Dapr default false)")
    ignored.add_argument(
        "--profile-port",
        metavar="PORT",
        default=None,
        help=f"(Dapr default {DEFAULT_PROFILE_PORT})",
    )
    ignored.add_argument(
        "--placement-host-address", metavar="ADDRESS", default=None, help="(Dapr default localhost)"
    )
    ignored.add_argument(
        "--scheduler-host-address", metavar="ADDRESS", default=None, help="(Dapr default localhost)"
    )
    ignored.add_argument("--image", metavar="IMAGE", default=None)
    ignored.add_argument("--runtime-path", metavar="DIR", default=None)
    _bool_flag(ignored, "-k", "--kubernetes", default=None, help="(Dapr default false)")

    daprd = parser.add_argument_group("daprd flags")
    daprd.add_argument(
        "--dapr-graceful-shutdown-seconds",
        type=non_negative,
        default=DEFAULT_GRACEFUL_SHUTDOWN,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, or when the app exits, stop taking new work and wait up "
        "to this long for deliveries and API calls in flight (default 5)",
    )
    _bool_flag(
        daprd,
        "--enable-metrics",
        default=True,
        help="serve Prometheus metrics on --metrics-port (default true)",
    )


def notices(namespace: argparse.Namespace) -> list[str]:
    """One line per flag given that has no meaning here, or is taken differently."""
    lines = [
        f"{flag} is accepted for dapr run compatibility and ignored: {why}"
        for dest, (flag, why) in NOTICES.items()
        if getattr(namespace, dest) not in (None, False)
    ]
    return lines


def apply_app_ssl(namespace: argparse.Namespace) -> None:
    """``--app-ssl`` as daprd takes it: the app's protocol with TLS (http → https, grpc →
    grpcs); the others (https, grpcs, h2c) stay as they are."""
    if namespace.app_ssl:
        namespace.app_protocol = {"http": "https", "grpc": "grpcs"}.get(
            namespace.app_protocol, namespace.app_protocol
        )


def plain_protocol(protocol: str) -> str:
    """The protocol the app is called with: ``http`` or ``grpc``."""
    return "grpc" if is_grpc(protocol) else "http"


__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_INTERNAL_GRPC_PORT",
    "DEFAULT_METRICS_PORT",
    "LOG_LEVELS",
    "add_dapr_run_flags",
    "generate_app_id",
    "notices",
    "plain_protocol",
]
