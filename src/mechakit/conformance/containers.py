"""Backends in containers, where Docker answers: the testcontainers recipes share these."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

from .backends import BackendUnavailable


def testcontainers(module: str, name: str) -> Any:
    """``testcontainers.<module>.<name>``; BackendUnavailable when testcontainers is missing."""
    try:
        return getattr(importlib.import_module(f"testcontainers.{module}"), name)
    except ImportError:
        raise BackendUnavailable("testcontainers is not installed") from None


def started(
    container: Any, image: str, ready: Callable[[str, str], None] | None = None, port: int = 0
) -> tuple[str, str]:
    """Start ``container`` and return its host and the host port of ``port``; ``ready(host,
    port)`` waits until it serves. Any failure stops it and is BackendUnavailable."""
    try:
        container.start()
        host = str(container.get_container_host_ip())
        exposed = str(container.get_exposed_port(port)) if port else ""
        if ready is not None:
            ready(host, exposed)
    except Exception as exc:
        with contextlib.suppress(Exception):
            container.stop()
        raise BackendUnavailable(f"could not start {image}: {exc}") from None
    return host, exposed
